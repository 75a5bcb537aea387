-- wrk script for load-tests/memory.sh: chat.lua's request, stopped after SY_LIMIT answers (one thread).
-- wrk itself only knows durations: at the limit the thread stops sending and creates the file
-- SY_DONE_FILE, and memory.sh then interrupts wrk (SIGINT), which still prints done()'s RESULT line.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "chat.lua")

local limit = tonumber(os.getenv("SY_LIMIT") or "0") or 0
local done_file = os.getenv("SY_DONE_FILE")
local answered = 0

function response(status, headers, body)
  answered = answered + 1
  if limit > 0 and answered == limit then
    wrk.thread:stop()
    if done_file then
      local f = io.open(done_file, "w")
      if f then f:close() end
    end
  end
end
