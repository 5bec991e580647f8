-- Prelude of every script that reports a change: one stream entry, and the stream's expiry.
local function emit(stream, kind, data, maxlen, ttl)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', kind, 'data', data)
  redis.call('EXPIRE', stream, tonumber(ttl))
end
