"""Redis state store. Every call is one round trip: a user's state is one read-only Lua
script (sent hand-packed: a request's whole read costs one command), the feedback
worker's `prepare` and `apply` are one Lua script each (`apply` atomic, all or nothing),
sent hand-packed and answered compactly, since a batch has thousands of arguments.

Lua scripts build key names from the prefix, so the store needs a single Redis (or one
hash slot), as the MULTI/EXEC it replaced did; `#!lua` flags need Redis >= 7.0.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import redis
from redis.exceptions import NoScriptError

from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import (
    DEDUP_TTL_S,
    HISTORY_LENGTH,
    CatalogueItems,
    CatalogueState,
    Conflict,
    PendingBatch,
    StoreUnavailable,
    UserFeedback,
    UserState,
    decode_history,
)
from shortlist.rpc.telemetry import REDIS_LATENCY

# What a request needs of a user: vector (for the bundle version), seen and disliked sets,
# recent history, live like count, and the catalogue's generation (cat:gen).
# ARGV: prefix, user id, version.
STATE_LUA = """#!lua flags=no-writes
local base = ARGV[1] .. 'u:' .. ARGV[2] .. ':'
return {
  redis.call('GET', base .. 'vec:' .. ARGV[3]),
  redis.call('SMEMBERS', base .. 'seen'),
  redis.call('SMEMBERS', base .. 'dis'),
  redis.call('LRANGE', base .. 'hist', 0, -1),
  redis.call('GET', base .. 'likes'),
  redis.call('GET', ARGV[1] .. 'cat:gen'),
}
"""

# Scripts build key names from the prefix. A user's `kinds` hash maps item id -> latest
# kind, and field "" (never an item id: ids are non-empty) counts the applies that touched
# the user (its `seq`).

# Read half of a batch, one round trip, answered as one string: a flag byte per event id
# ("1": already applied), then per user a header (seq, vector length, kinds length, kinds
# mode: 4+4+4+1 bytes, big-endian), the stored vector (empty when absent or when the whole
# state is asked for) and the kinds: with a vector, one character per batch item ("0":
# none), mode 0; else all of them, as "<kind><item>" lines (mode 1) or, when an item id
# holds a newline, as <item length (4 bytes)><kind><item> entries (mode 2).
# ARGV: prefix, version, complete ("1"/"0"), n events, event ids..., then per user:
# user id, n items, items...
PREPARE_LUA = """#!lua flags=no-writes
local p, ver, complete = ARGV[1], ARGV[2], ARGV[3] == '1'
local n = tonumber(ARGV[4])
local out, keys = {}, {}
for lo = 1, n, 500 do
  local hi = math.min(lo + 499, n)
  for j = lo, hi do
    keys[j - lo + 1] = p .. 'ev:' .. ARGV[4 + j]
  end
  local marks = redis.call('MGET', unpack(keys, 1, hi - lo + 1))
  for j = 1, hi - lo + 1 do
    out[lo + j - 1] = marks[j] and '1' or '0'
  end
end
local i = 5 + n
while i <= #ARGV do
  local m = tonumber(ARGV[i + 1])
  local base = p .. 'u:' .. ARGV[i] .. ':'
  local vec = false
  if not complete then
    vec = redis.call('GET', base .. 'vec:' .. ver)
  end
  local seq, kinds, mode = '0', nil, 0
  if vec then
    local chars = {}
    for lo = 1, m, 500 do
      local hi = math.min(lo + 499, m)
      local part = redis.call('HMGET', base .. 'kinds', '', unpack(ARGV, i + 1 + lo, i + 1 + hi))
      seq = part[1] or '0'
      for j = 2, #part do
        chars[#chars + 1] = part[j] or '0'
      end
    end
    kinds = table.concat(chars)
  else
    vec = ''
    local all = redis.call('HGETALL', base .. 'kinds')
    local lines = {}
    mode = 1
    for j = 1, #all, 2 do
      if all[j] == '' then
        seq = all[j + 1]
      else
        if string.find(all[j], '\\n', 1, true) then
          mode = 2
        end
        lines[#lines + 1] = all[j + 1] .. all[j]
      end
    end
    if mode == 1 then
      kinds = table.concat(lines, '\\n')
    else
      for j = 1, #lines do
        lines[j] = struct.pack('>I4', #lines[j] - 1) .. lines[j]
      end
      kinds = table.concat(lines)
    end
  end
  out[#out + 1] = struct.pack('>I4I4I4B', tonumber(seq), #vec, #kinds, mode)
  out[#out + 1] = vec
  out[#out + 1] = kinds
  i = i + 2 + m
end
return table.concat(out)
"""

# Write half, atomic: a script runs to the end before Redis serves anyone else, and it
# checks everything before its first write, so it either applies the whole chunk (marks,
# sets, history, counters, kinds, vectors, seqs) or writes nothing and answers a conflict.
# With seqs to check, an unchanged seq means nobody applied anything for the user since
# prepare found the events new; without, every event id is checked.
# Like, dislike and skip events on a new item (one the bundle does not know, not removed)
# also set the user's kind in the item's i:fb:{item} hash, which its fold-in reads.
# ARGV: prefix, version, dedup ttl, history length, check seqs ("1"/"0"), n new items, new
# items..., then per user: user id, expected seq, vector bytes ("" leaves it), n events,
# then per event: id, item, kind
APPLY_LUA = """#!lua
local p, ver, ttl = ARGV[1], ARGV[2], ARGV[3]
local keep, check = tonumber(ARGV[4]), ARGV[5] == '1'
local LIKE, DISLIKE, SKIP = '@LIKE@', '@DISLIKE@', '@SKIP@'
local newitem = {}
for j = 7, 6 + tonumber(ARGV[6]) do
  if redis.call('SISMEMBER', p .. 'cat:removed', ARGV[j]) == 0 then
    newitem[ARGV[j]] = true
  end
end
local first = 7 + tonumber(ARGV[6])
local function many(cmd, key, values, step)
  local r
  for lo = 1, #values, step do
    r = redis.call(cmd, key, unpack(values, lo, math.min(lo + step - 1, #values)))
  end
  return r
end
local i = first
while i <= #ARGV do
  local user, m = ARGV[i], tonumber(ARGV[i + 3])
  if check then
    local seq = redis.call('HGET', p .. 'u:' .. user .. ':kinds', '') or '0'
    if seq ~= ARGV[i + 1] then
      return {0, 'user ' .. user .. ' changed since prepare'}
    end
  else
    for k = i + 4, i + 3 + 3 * m, 3 do
      if redis.call('EXISTS', p .. 'ev:' .. ARGV[k]) == 1 then
        return {0, 'event ' .. ARGV[k] .. ' is already applied'}
      end
    end
  end
  i = i + 4 + 3 * m
end
local liked, liked_order = {}, {}
i = first
while i <= #ARGV do
  local expected, vec, m = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local base = p .. 'u:' .. ARGV[i] .. ':'
  local items, hist, kinds, disliked, order, likes = {}, {}, {}, {}, {}, 0
  for k = i + 4, i + 3 + 3 * m, 3 do
    local item, kind = ARGV[k + 1], ARGV[k + 2]
    redis.call('SET', p .. 'ev:' .. ARGV[k], 1, 'EX', ttl)
    items[#items + 1] = item
    hist[#hist + 1] = kind .. ':' .. item
    kinds[#kinds + 1] = item
    kinds[#kinds + 1] = kind
    if newitem[item] and (kind == LIKE or kind == DISLIKE or kind == SKIP) then
      redis.call('HSET', p .. 'i:fb:' .. item, ARGV[i], kind)
    end
    if kind == DISLIKE or kind == LIKE then
      if disliked[item] == nil then
        order[#order + 1] = item
      end
      disliked[item] = kind == DISLIKE
    end
    if kind == LIKE then
      likes = likes + 1
      if liked[item] == nil then
        liked[item] = 0
        liked_order[#liked_order + 1] = item
      end
      liked[item] = liked[item] + 1
    end
  end
  local add, remove = {}, {}
  for _, item in ipairs(order) do
    if disliked[item] then
      add[#add + 1] = item
    else
      remove[#remove + 1] = item
    end
  end
  many('SADD', base .. 'seen', items, 500)
  many('SADD', base .. 'dis', add, 500)
  many('SREM', base .. 'dis', remove, 500)
  if m > 0 and many('LPUSH', base .. 'hist', hist, 500) > keep then
    redis.call('LTRIM', base .. 'hist', 0, keep - 1)
  end
  if check then
    kinds[#kinds + 1] = ''
    kinds[#kinds + 1] = tostring(tonumber(expected) + 1)
  else
    redis.call('HINCRBY', base .. 'kinds', '', 1)
  end
  many('HSET', base .. 'kinds', kinds, 500)
  if likes > 0 then
    redis.call('INCRBY', base .. 'likes', likes)
  end
  if vec ~= '' then
    redis.call('SET', base .. 'vec:' .. ver, vec)
  end
  i = i + 4 + 3 * m
end
local ilikes = p .. 'i:likes'
for _, item in ipairs(liked_order) do
  redis.call('HINCRBY', ilikes, item, liked[item])
end
return {1, ''}
"""
for _kind in (Kind.LIKE, Kind.DISLIKE, Kind.SKIP):
    APPLY_LUA = APPLY_LUA.replace(f"@{_kind.name}@", str(int(_kind)))

# A FORGET event, atomic and exactly once: nothing when its id is marked; else the user's
# keys (ARGV from 6: their vec:* keys, found by SCAN) deleted, their likes taken off the
# item like counts and their kinds off new items' feedback, and the id marked.
# ARGV: prefix, event id, dedup ttl, user id, LIKE, vector keys...
FORGET_LUA = """#!lua
local p, id, ttl, user, LIKE = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', p .. 'ev:' .. id) == 1 then
  return 0
end
local base = p .. 'u:' .. user .. ':'
local kinds = redis.call('HGETALL', base .. 'kinds')
for j = 1, #kinds, 2 do
  local item = kinds[j]
  if item ~= '' then
    redis.call('HDEL', p .. 'i:fb:' .. item, user)
    if kinds[j + 1] == LIKE and redis.call('HINCRBY', p .. 'i:likes', item, -1) <= 0 then
      redis.call('HDEL', p .. 'i:likes', item)
    end
  end
end
redis.call('DEL', base .. 'seen', base .. 'dis', base .. 'hist', base .. 'likes', base .. 'kinds')
for j = 6, #ARGV do
  redis.call('DEL', ARGV[j])
end
redis.call('SET', p .. 'ev:' .. id, 1, 'EX', ttl)
return 1
"""

# Catalogue changes, each one script (atomic) answering how many items changed; any change
# moves cat:gen. ARGV: prefix, then the items (upsert: the time in ms, then item, attributes
# JSON pairs; a changed item's time goes to cat:updated).
UPSERT_LUA = """#!lua
local p, now, n = ARGV[1], ARGV[2], 0
for j = 3, #ARGV, 2 do
  if redis.call('SISMEMBER', p .. 'cat:removed', ARGV[j]) == 0
      and redis.call('HGET', p .. 'cat:attrs', ARGV[j]) ~= ARGV[j + 1] then
    redis.call('HSET', p .. 'cat:attrs', ARGV[j], ARGV[j + 1])
    redis.call('HSET', p .. 'cat:updated', ARGV[j], now)
    n = n + 1
  end
end
if n > 0 then redis.call('INCR', p .. 'cat:gen') end
return n
"""
HIDE_LUA = """#!lua
local p, n = ARGV[1], 0
for j = 2, #ARGV do
  if redis.call('SISMEMBER', p .. 'cat:removed', ARGV[j]) == 0 then
    n = n + redis.call('SADD', p .. 'cat:hidden', ARGV[j])
  end
end
if n > 0 then redis.call('INCR', p .. 'cat:gen') end
return n
"""
SHOW_LUA = """#!lua
local p, n = ARGV[1], 0
for j = 2, #ARGV do
  n = n + redis.call('SREM', p .. 'cat:hidden', ARGV[j])
end
if n > 0 then redis.call('INCR', p .. 'cat:gen') end
return n
"""
# Removing also deletes the item's attributes, feedback, like count and vectors of every
# version (the i:vec:* hashes, found by SCAN, from ARGV[2 + n_items]).
REMOVE_LUA = """#!lua
local p, m, n = ARGV[1], tonumber(ARGV[2]), 0
for j = 3, 2 + m do
  local item = ARGV[j]
  if redis.call('SADD', p .. 'cat:removed', item) == 1 then
    n = n + 1
    redis.call('SREM', p .. 'cat:hidden', item)
    redis.call('HDEL', p .. 'cat:attrs', item)
    redis.call('HDEL', p .. 'cat:updated', item)
    redis.call('HDEL', p .. 'i:likes', item)
    redis.call('DEL', p .. 'i:fb:' .. item)
    for k = 3 + m, #ARGV do
      redis.call('HDEL', ARGV[k], item)
    end
  end
end
if n > 0 then redis.call('INCR', p .. 'cat:gen') end
return n
"""
# New items' feedback and their users' vectors for a version. Answer per item: its id,
# then user, kind, vector (false: none) triples. ARGV: prefix, version, items...
ITEM_FEEDBACK_LUA = """#!lua flags=no-writes
local p, ver, out = ARGV[1], ARGV[2], {}
for j = 3, #ARGV do
  local item = ARGV[j]
  if redis.call('SISMEMBER', p .. 'cat:removed', item) == 0 then
    local all = redis.call('HGETALL', p .. 'i:fb:' .. item)
    if #all > 0 then
      local entry = {item}
      for k = 1, #all, 2 do
        entry[#entry + 1] = all[k]
        entry[#entry + 1] = all[k + 1]
        entry[#entry + 1] = redis.call('GET', p .. 'u:' .. all[k] .. ':vec:' .. ver) or ''
      end
      out[#out + 1] = entry
    end
  end
end
return out
"""

PREPARE_CHUNK = 500  # events per prepare script
_HEADER = struct.Struct(">IIIB")
_LENGTH = struct.Struct(">I")


def _pack_command(args: Sequence[bytes | str | int]) -> bytes:
    """RESP encoding of one command (what redis-py does per argument, far cheaper)."""
    raw = [a if type(a) is bytes else str(a).encode() for a in args]
    return b"*%d\r\n" % len(raw) + b"".join([b"$%d\r\n%s\r\n" % (len(a), a) for a in raw])


def _kinds_of(mode: int, blob: bytes, batch_items) -> dict[str, int]:
    """Item -> kind from the prepare script's answer for one user (see PREPARE_LUA)."""
    if mode == 0:
        return {i: k - 48 for i, k in zip(batch_items, blob) if k != 48}
    if not blob:
        return {}
    if mode == 1:
        return {line[1:].decode(): line[0] - 48 for line in blob.split(b"\n")}
    out, pos = {}, 0
    while pos < len(blob):
        (size,) = _LENGTH.unpack_from(blob, pos)
        out[blob[pos + 5 : pos + 5 + size].decode()] = blob[pos + 4] - 48
        pos += 5 + size
    return out


class RedisStateStore:
    """Keys (under `prefix`): u:{user}:seen / :dis (sets), :hist (list), :vec:{version}
    (float32 bytes), :likes (counter), :kinds (hash item -> latest kind, and "" -> applies
    so far); i:likes (hash item -> live likes); ev:{id} (dedup mark). The catalogue:
    cat:gen (change counter), cat:hidden and cat:removed (sets), cat:attrs (hash item ->
    attributes as JSON), cat:updated (hash item -> last changing upsert, ms); new items:
    i:fb:{item} (hash user -> kind), i:vec:{version} (hash item -> float32 bytes)."""

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "sl:", timeout_s: float = 0.5
    ) -> None:
        self.prefix = prefix
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        self._prepare_sha = hashlib.sha1(PREPARE_LUA.encode()).hexdigest()
        self._apply_sha = hashlib.sha1(APPLY_LUA.encode()).hexdigest()
        self._state_sha = hashlib.sha1(STATE_LUA.encode()).hexdigest()
        self._scripts = {
            name: (hashlib.sha1(text.encode()).hexdigest(), text)
            for name, text in (
                ("forget", FORGET_LUA),
                ("upsert", UPSERT_LUA),
                ("hide", HIDE_LUA),
                ("show", SHOW_LUA),
                ("remove", REMOVE_LUA),
                ("item_feedback", ITEM_FEEDBACK_LUA),
            )
        }

    def _script(self, name: str, args: list):
        sha, text = self._scripts[name]
        return self._eval(sha, text, args, name)

    def _scan(self, pattern: str) -> list[bytes]:
        try:
            return list(self._redis.scan_iter(match=pattern, count=1000))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def _u(self, user_id: str, what: str) -> str:
        return f"{self.prefix}u:{user_id}:{what}"

    def _run(self, pipe: redis.client.Pipeline, operation: str) -> list:
        start = time.perf_counter()
        try:
            return pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        finally:
            REDIS_LATENCY.labels(operation).observe(time.perf_counter() - start)

    def ping(self) -> None:
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def user_state(self, user_id: str, version: str) -> UserState:
        raw_vec, seen, disliked, hist, likes, generation = self._eval(
            self._state_sha, STATE_LUA, [self.prefix, user_id, version], "user_state"
        )
        return UserState(
            vector=None if raw_vec is None else np.frombuffer(raw_vec, np.float32).copy(),
            seen={s.decode() for s in seen},
            disliked={s.decode() for s in disliked},
            history=[decode_history(h) for h in hist],
            likes=int(likes or 0),
            catalogue_generation=int(generation or 0),
        )

    def drop_vectors(self, version: str) -> int:
        """SCAN for `u:*:vec:{version}` and UNLINK in batches: never one long command."""
        pattern = f"{_glob_escape(self.prefix)}u:*:vec:{_glob_escape(version)}"
        dropped = 0
        try:
            batch = []
            for key in self._redis.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    dropped += self._redis.unlink(*batch)
                    batch = []
            if batch:
                dropped += self._redis.unlink(*batch)
            self._redis.unlink(f"{self.prefix}i:vec:{version}")
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return dropped

    def item_likes(self) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(f"{self.prefix}i:likes")
        (counts,) = self._run(pipe, "item_likes")
        return {item.decode(): int(n) for item, n in counts.items()}

    def prepare(
        self, events: Sequence[Event], version: str = "", complete: bool = False
    ) -> PendingBatch:
        # Scripts of about PREPARE_CHUNK events (whole users), sent in one round trip: a
        # script holds Redis to itself while it runs, so none may run long.
        by_user: dict[str, list[int]] = {}
        for n, e in enumerate(events):
            by_user.setdefault(e.user_id, []).append(n)
        chunks: list[list[str]] = [[]]
        size = 0
        for user, positions in by_user.items():
            if size and size + len(positions) > PREPARE_CHUNK:
                chunks.append([])
                size = 0
            chunks[-1].append(user)
            size += len(positions)
        calls, plan = [], []
        for users_of_chunk in chunks:
            positions = [n for u in users_of_chunk for n in by_user[u]]
            args: list = [self.prefix, version, "1" if complete else "0", len(positions)]
            args += [events[n].event_id for n in positions]
            items_of_chunk = []
            for user in users_of_chunk:
                batch_items = dict.fromkeys(events[n].item_id for n in by_user[user])
                items_of_chunk.append(batch_items)
                args += [user, 0] if complete else [user, len(batch_items), *batch_items]
            calls.append(args)
            plan.append((positions, users_of_chunk, items_of_chunk))
        replies = self._eval_many(self._prepare_sha, PREPARE_LUA, calls, "prepare")
        new = [False] * len(events)
        users: dict[str, UserFeedback] = {}
        for reply, (positions, users_of_chunk, items_of_chunk) in zip(replies, plan):
            for n, flag in zip(positions, reply):
                new[n] = flag == 48
            pos = len(positions)
            for user, batch_items in zip(users_of_chunk, items_of_chunk):
                seq, n_vec, n_kinds, mode = _HEADER.unpack_from(reply, pos)
                pos += _HEADER.size
                vec = np.frombuffer(reply, np.float32, n_vec // 4, pos) if n_vec else None
                pos += n_vec
                kinds = _kinds_of(mode, reply[pos : pos + n_kinds], batch_items)
                pos += n_kinds
                users[user] = UserFeedback(
                    seq=seq,
                    vector=None if vec is None else vec.copy(),
                    kinds=kinds,
                    complete=vec is None,
                )
        return PendingBatch(new=new, users=users)

    def apply(
        self,
        events: Sequence[Event],
        vectors: Mapping[str, np.ndarray],
        version: str,
        expected: Mapping[str, int] | None = None,
        new_items: Collection[str] = (),
    ) -> None:
        by_user: dict[str, list[Event]] = {u: [] for u in vectors}
        for e in events:
            by_user.setdefault(e.user_id, []).append(e)
        if not by_user:
            return
        args: list = [self.prefix, version, DEDUP_TTL_S, HISTORY_LENGTH]
        args.append("0" if expected is None else "1")
        touched = sorted({e.item_id for e in events} & set(new_items))
        args += [len(touched), *touched]
        for user, user_events in by_user.items():
            vec = vectors.get(user)
            args += [
                user,
                0 if expected is None else expected.get(user, 0),
                b"" if vec is None else np.asarray(vec, np.float32).tobytes(),
                len(user_events),
            ]
            for e in user_events:
                args += [e.event_id, e.item_id, int(e.kind)]
        ok, reason = self._eval(self._apply_sha, APPLY_LUA, args, "apply")
        if not ok:
            raise Conflict(reason.decode(errors="replace"))

    def forget(self, event: Event) -> bool:
        user = _glob_escape(event.user_id)
        vectors = self._scan(f"{_glob_escape(self.prefix)}u:{user}:vec:*")
        args = [self.prefix, event.event_id, DEDUP_TTL_S, event.user_id, int(Kind.LIKE)]
        return bool(self._script("forget", args + vectors))

    def catalogue_generation(self) -> int:
        try:
            return int(self._redis.get(f"{self.prefix}cat:gen") or 0)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def catalogue(self, version: str) -> CatalogueState:
        p = self.prefix
        pipe = self._redis.pipeline(transaction=True)  # one consistent snapshot
        pipe.get(f"{p}cat:gen")
        pipe.smembers(f"{p}cat:hidden")
        pipe.smembers(f"{p}cat:removed")
        pipe.hgetall(f"{p}i:vec:{version}")
        generation, hidden, removed, vectors = self._run(pipe, "catalogue")
        removed_ids = {i.decode() for i in removed}
        return CatalogueState(
            generation=int(generation or 0),
            hidden={i.decode() for i in hidden} | removed_ids,
            removed=removed_ids,
            vectors={i.decode(): np.frombuffer(v, np.float32).copy() for i, v in vectors.items()},
        )

    def upsert_items(self, items: Mapping[str, Mapping[str, str]]) -> int:
        args: list = [self.prefix, int(time.time() * 1000)]
        for item, attributes in items.items():
            args += [item, json.dumps(dict(attributes), sort_keys=True)]
        return int(self._script("upsert", args))

    def catalogue_items(self) -> CatalogueItems:
        p = self.prefix
        pipe = self._redis.pipeline(transaction=True)  # one consistent snapshot
        pipe.get(f"{p}cat:gen")
        pipe.hgetall(f"{p}cat:attrs")
        pipe.hgetall(f"{p}cat:updated")
        pipe.sunion(f"{p}cat:hidden", f"{p}cat:removed")
        generation, attrs, updated, hidden = self._run(pipe, "catalogue_items")
        return CatalogueItems(
            generation=int(generation or 0),
            attributes={i.decode(): json.loads(v) for i, v in attrs.items()},
            updated_ms={i.decode(): int(v) for i, v in updated.items()},
            hidden={i.decode() for i in hidden},
        )

    def item_attributes(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        if not item_ids:
            return {}
        try:
            values = self._redis.hmget(f"{self.prefix}cat:attrs", list(item_ids))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return {i: json.loads(v) for i, v in zip(item_ids, values) if v is not None}

    def hide_items(self, item_ids: Sequence[str]) -> int:
        return int(self._script("hide", [self.prefix, *item_ids]))

    def show_items(self, item_ids: Sequence[str]) -> int:
        return int(self._script("show", [self.prefix, *item_ids]))

    def remove_items(self, item_ids: Sequence[str]) -> int:
        vectors = self._scan(f"{_glob_escape(self.prefix)}i:vec:*")
        return int(self._script("remove", [self.prefix, len(item_ids), *item_ids, *vectors]))

    def item_feedback(
        self, item_ids: Sequence[str], version: str
    ) -> dict[str, dict[str, tuple[int, np.ndarray | None]]]:
        if not item_ids:
            return {}
        reply = self._script("item_feedback", [self.prefix, version, *item_ids])
        out: dict[str, dict[str, tuple[int, np.ndarray | None]]] = {}
        for entry in reply:
            users = {}
            for k in range(1, len(entry), 3):
                raw = entry[k + 2]
                vec = np.frombuffer(raw, np.float32).copy() if raw else None
                users[entry[k].decode()] = (int(entry[k + 1]), vec)
            out[entry[0].decode()] = users
        return out

    def set_item_vectors(self, vectors: Mapping[str, np.ndarray], version: str) -> None:
        if not vectors:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            f"{self.prefix}i:vec:{version}",
            mapping={i: np.asarray(v, np.float32).tobytes() for i, v in vectors.items()},
        )
        pipe.incr(f"{self.prefix}cat:gen")
        self._run(pipe, "set_item_vectors")

    def _eval(self, sha: str, script: str, args: list, operation: str):
        return self._eval_many(sha, script, [args], operation)[0]

    def _eval_many(self, sha: str, script: str, calls: list[list], operation: str) -> list:
        """EVALSHA per argument list, hand-packed and pipelined on one pooled connection.
        On NOSCRIPT (e.g. after a Redis restart; a script not found did not run) it loads
        the script and sends the calls again. Connection trouble (or Redis loading, busy,
        read-only, out of memory): StoreUnavailable."""
        payload = b"".join(_pack_command(["EVALSHA", sha, 0, *args]) for args in calls)
        start = time.perf_counter()
        pool = self._redis.connection_pool
        try:
            conn = pool.get_connection()  # connects when the pool has no idle connection
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            REDIS_LATENCY.labels(operation).observe(time.perf_counter() - start)
            raise StoreUnavailable(f"redis: {exc}") from exc
        try:
            for attempt in range(2):
                conn.send_packed_command([payload])
                replies, missing = [], False
                for _ in calls:
                    try:
                        replies.append(conn.read_response())
                    except NoScriptError:
                        missing = True
                if not missing:
                    return replies
                if attempt:
                    raise NoScriptError(f"script {sha} not loaded")
                conn.send_command("SCRIPT", "LOAD", script)
                conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            conn.disconnect()
            raise StoreUnavailable(f"redis: {exc}") from exc
        except redis.ResponseError as exc:
            conn.disconnect()  # replies of the other calls may still be on the wire
            if str(exc).startswith(("LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM")):
                raise StoreUnavailable(f"redis: {exc}") from exc
            raise
        finally:
            pool.release(conn)
            REDIS_LATENCY.labels(operation).observe(time.perf_counter() - start)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._redis.close()


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
