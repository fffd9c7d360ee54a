"""HTTP/1.1 codec: downstream and upstream asyncio Protocols on httptools, framing and flow control."""
