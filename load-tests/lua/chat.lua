-- wrk script: POST a small chat completion to every system alike.
--   SY_STREAM=1     ask for "stream": true (wrk then times the whole chunked body: time to last chunk)
--   SY_SESSIONS=N   cycle through N distinct X-Session-Id values (0: no header)
--   SY_AUTH=KEY     send Authorization: Bearer KEY (Switchyard "full" only: other systems get no header)
--   SY_HEADERS="Name: value|Name: value"  extra headers a peer gateway needs (noveum's x-provider)
--   SY_ROUTE=chat|messages|responses  the request's shape (below)
-- done() prints one machine-readable line that run.sh parses:
--   RESULT requests=.. duration_us=.. p50=.. p90=.. p99=.. p999=.. max=.. non2xx=.. errors=..
-- (latencies in microseconds, as wrk records them).

local stream = os.getenv("SY_STREAM") == "1"
local sessions = tonumber(os.getenv("SY_SESSIONS") or "0") or 0
local auth = os.getenv("SY_AUTH") or ""
local extra = {}
for h in string.gmatch(os.getenv("SY_HEADERS") or "", "[^|]+") do
  local name, value = string.match(h, "^%s*([^:]+):%s*(.-)%s*$")
  if name then extra[name] = value end
end

-- SY_ROUTE=messages|responses: the same small request in the Anthropic Messages or OpenAI Responses
-- shape (for /v1/messages, /v1/responses; run.sh sets the path); default: chat.
local route = os.getenv("SY_ROUTE") or "chat"
local bodies = {
  chat = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},'
    .. '{"role":"user","content":"Say hello in five words."}],"max_tokens":16',
  messages = '{"model":"claude-x","system":"You are terse.",'
    .. '"messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16',
  responses = '{"model":"gpt-4o-mini","instructions":"You are terse.",'
    .. '"input":"Say hello in five words.","max_output_tokens":16',
}
local body = assert(bodies[route], "unknown SY_ROUTE") .. (stream and ',"stream":true' or '') .. '}'

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
if auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
for name, value in pairs(extra) do wrk.headers[name] = value end

local reqs = {}
local n = 0
local i = 0

function init(args)
  for k = 1, sessions do
    local headers = {
      ["Content-Type"] = "application/json",
      ["X-Session-Id"] = string.format("load-session-%d", k),
    }
    if auth ~= "" then
      headers["Authorization"] = "Bearer " .. auth
    end
    for name, value in pairs(extra) do headers[name] = value end
    reqs[k] = wrk.format(nil, nil, headers, body)
  end
  n = sessions
end

if sessions > 0 then
  request = function()
    i = i + 1
    if i > n then i = 1 end
    return reqs[i]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50=%d p90=%d p99=%d p999=%d max=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
