"""Tether's wire protocol, sans-I/O: frames, codec, delivery classes, streams, handshake,
liveness and hello signing. Imports nothing of ours; does no I/O, reads no clock."""
