"""Telephony servers: protocol parsers as sans-I/O state machines and thin asyncio servers around them."""
