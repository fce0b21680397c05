#!lua name=sluice_1

-- sluice's Redis function library, version 1 (platform/src/redis/functions.rs).
--
-- Loaded by the operator as `admin` in a managed Redis, or by a process
-- whose user may run FUNCTION LOAD. A caller runs these functions with its
-- own ACL user: every command below is checked against it, so calling one
-- grants nothing the caller could not do command by command.
--
-- Every loop is bounded by the call's own arguments, which are checked
-- before any command runs.

-- The largest number of ids given to one XACK or XDEL, and of arguments to
-- one XADD (Lua's unpack is bounded by its stack).
local CHUNK = 1000

local function malformed(what)
  return redis.error_reply('ERR sluice_1_hand_off: ' .. what)
end

-- Said as MULTI's refusal is: nothing ran.
local function refused(key)
  return redis.error_reply('EXECABORT sluice_1_hand_off: NOPERM this user may not run '
    .. 'one of the hand-off\'s commands on ' .. key .. '; nothing ran')
end

local function whole(s)
  local n = tonumber(s)
  if n == nil or n ~= math.floor(n) then
    return nil
  end
  return n
end

-- Commands on `ids` (args[from..to]) in chunks; the sum of the answers, or
-- the first error.
local function on_ids(cmd, head, args, from, to)
  local sum = 0
  local i = from
  while i <= to do
    local last = math.min(i + CHUNK - 1, to)
    local r
    if head[2] then
      r = redis.pcall(cmd, head[1], head[2], unpack(args, i, last))
    else
      r = redis.pcall(cmd, head[1], unpack(args, i, last))
    end
    if type(r) == 'table' and r.err then
      return r
    end
    sum = sum + r
    i = last + 1
  end
  return sum
end

-- A worker's hand-off in one command, run as MULTI … EXEC would run it:
-- refused as a whole (EXECABORT) when the caller may not run one of its
-- commands; else the XADDs in order, then XACK and XDEL of the entries,
-- every command even when one before it failed. The answer is the first
-- failure, else one answer per XADD (its id, or nil for NOMKSTREAM on a
-- missing stream), then XACK's and XDEL's counts.
--
-- KEYS[1]  the stream the entries were read from
-- ARGV     group, n, the n entry ids,
--          then per XADD: its stream, k, and its k arguments after the key
local function hand_off(keys, args)
  local source = keys[1]
  local total = #args
  local n = whole(args[2])
  if #keys ~= 1 or n == nil or n < 1 or n > total - 2 then
    return malformed('expected one key, a group and entry ids')
  end
  -- The whole call is checked before anything runs: its shape, and the
  -- caller's permission for each command (which MULTI checks as it
  -- queues them, discarding the transaction when one is refused).
  if not (redis.acl_check_cmd('XACK', source, args[1], args[3])
      and redis.acl_check_cmd('XDEL', source, args[3])) then
    return refused(source)
  end
  local at = n + 3
  while at <= total do
    local k = whole(args[at + 1])
    if k == nil or k < 1 or k > CHUNK or k > total - at - 1 then
      return malformed('an XADD\'s argument count does not match its arguments')
    end
    if not redis.acl_check_cmd('XADD', args[at], unpack(args, at + 2, at + 1 + k)) then
      return refused(args[at])
    end
    at = at + k + 2
  end
  local answers = {}
  local failed = nil
  at = n + 3
  while at <= total do
    local k = whole(args[at + 1])
    local r = redis.pcall('XADD', args[at], unpack(args, at + 2, at + 1 + k))
    if type(r) == 'table' and r.err then
      failed = failed or r
      r = false
    end
    answers[#answers + 1] = r
    at = at + k + 2
  end
  local acked = on_ids('XACK', { source, args[1] }, args, 3, n + 2)
  local deleted = on_ids('XDEL', { source }, args, 3, n + 2)
  for _, r in ipairs({ acked, deleted }) do
    if type(r) == 'table' then
      failed = failed or r
      r = false
    end
    answers[#answers + 1] = r
  end
  if failed then
    return failed
  end
  return answers
end

redis.register_function('sluice_1_hand_off', hand_off)
