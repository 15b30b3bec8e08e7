"""The Redis driver: run state in Lua-scripted hashes, messages in Redis Streams."""

from stem.drivers.redis.driver import RedisDriver

__all__ = ["RedisDriver"]
