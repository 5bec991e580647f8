-- Apply `fields` (a JSON object of JSON values) to a job only if its status is one of `allowed`
-- (a JSON list) and, given `token` (JSON), the job is still held by that run. When it applies:
-- `event` is the status event's data; `commands` a JSON list of Redis commands (counters) that run
-- only then; `result` the result image, stored only then (a run that lost the job cannot touch
-- it); `result_bytes` the result's size, wherever it is kept (Redis, or the blob store for a job
-- whose result is an object there); `ending`, when the change ends the job, its id: its inputs
-- are deleted and its held bytes become its outputs' for `ttl` (tenancy.lua's `ended`).
-- Returns {1, old status} when applied, {0, old status} when not, {0, false} for no job.
-- KEYS: job events result
-- ARGV: allowed fields token? event? maxlen ttl commands? ending? result? result_bytes layout
-- USES: emit tenancy
local current = redis.call('HGET', KEY.job, 'status')
if not current then return {0, false} end
local status = cjson.decode(current)
if ARG.token and redis.call('HGET', KEY.job, 'run_token') ~= ARG.token then return {0, status} end
for _, allowed in ipairs(cjson.decode(ARG.allowed)) do
  if allowed == status then
    for name, value in pairs(cjson.decode(ARG.fields)) do
      redis.call('HSET', KEY.job, name, value)
    end
    if ARG.event then emit(KEY.events, 'status', ARG.event, ARG.maxlen, ARG.ttl) end
    if ARG.commands then
      for _, command in ipairs(cjson.decode(ARG.commands)) do redis.call(unpack(command)) end
    end
    if ARG.result then redis.call('SET', KEY.result, ARG.result, 'EX', tonumber(ARG.ttl)) end
    if ARG.ending then ended(ARG.ending, tonumber(ARG.result_bytes), tonumber(ARG.ttl)) end
    return {1, status}
  end
end
return {0, status}
