"""The node's WebRTC media plane (aiortc): one long-lived peer per ``peer_session_id``
(:mod:`.peers`), its ``control`` data channel (:mod:`.control`), its media (:mod:`.media`)
and ICE settings (:mod:`.ice`). docs/protocol.md "Media plane (node side)"."""
