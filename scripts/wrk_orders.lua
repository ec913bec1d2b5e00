-- wrk script: distinct sign-ups for one chain; each thread sends its share, then stops.
-- wrk's own req/s divides by its -d timer even when the threads stop early, so the span from the
-- first to the last answer is timed here (LuaJIT's FFI: gettimeofday).
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_usec; } timeval; int gettimeofday(timeval *tv, void *tz); ]]
local tv = ffi.new("timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  share = tonumber(args[2])
  sent, answered, created, conflict, other = 0, 0, 0, 0, 0
  first_ms, last_ms = 0, 0
end

function request()
  if first_ms == 0 then first_ms = now_ms() end
  sent = sent + 1
  local body = string.format(
    '{"name":"顾客%d-%d","phone_tail":"%04d","qty":1,"request_id":"bench-%d-%06d"}',
    id, sent, (id * 5000 + sent) % 10000, id, sent)
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  answered = answered + 1
  last_ms = now_ms()
  if status == 201 then created = created + 1
  elseif status == 409 then conflict = conflict + 1
  else other = other + 1 end
  if answered >= share then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local c, k, o, first, last = 0, 0, 0, nil, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created"); k = k + t:get("conflict"); o = o + t:get("other")
    local f, l = t:get("first_ms"), t:get("last_ms")
    if f > 0 and (first == nil or f < first) then first = f end
    if l > last then last = l end
  end
  io.write(string.format("created=%d conflict=%d other=%d span_ms=%.1f\n", c, k, o, last - (first or last)))
end
