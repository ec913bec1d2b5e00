-- wrk script: as wrk_callbacks.lua (pre-sealed callbacks, "<path?query>\t<body>" a line, a slice of
-- the file per thread), but paced: each connection waits args[3] ms before each request, so the load
-- is a steady rate (connections * 1000 / (wait + latency) per second) instead of as fast as it goes.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(args[2])
  wait_ms = tonumber(args[3])
  requests = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == id then
      local tab = line:find("\t", 1, true)
      requests[#requests + 1] = {line:sub(1, tab - 1), line:sub(tab + 1)}
    end
    i = i + 1
  end
  idx = 0
  exhausted = 0
end

function delay()
  return wait_ms
end

function request()
  idx = idx + 1
  if idx > #requests then
    idx = 1                       -- wrapped: further requests are redeliveries (deduplicated)
    exhausted = exhausted + 1
  end
  local r = requests[idx]
  return wrk.format("POST", r[1], {["Content-Type"] = "text/xml"}, r[2])
end

function done(summary, latency, requests)
  local wrapped = 0
  for _, t in ipairs(threads) do wrapped = wrapped + (t:get("exhausted") or 0) end
  io.write(string.format("wrapped=%d\n", wrapped))
end
