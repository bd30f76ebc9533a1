package rewrite

// RedisVersion is the version of redis-server that commands.json was
// captured from, and so the version keyfence presents to clients (HELLO,
// INFO). TestRedisVersionMatchesData keeps the two in step.
const RedisVersion = "7.0.15"
