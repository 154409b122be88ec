"""The controller's domain rules as pure code: no I/O, no clock, no random (callers pass
them in). The store asks these modules what to do and only stores the answer."""
