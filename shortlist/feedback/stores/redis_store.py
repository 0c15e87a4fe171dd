"""Redis state store, on one Redis or a Redis Cluster (`?cluster=1` in the URL).

Every Lua script touches the keys of one hash slot only, as Redis Cluster requires: a
user's keys share the hash tag `{u:<id>}`, the live catalogue's `{cat}`, and the items'
live like counts are sharded over `LIKE_SHARDS` tags `{il:<n>}` (an item's count lives in
one shard). A request's read is one script on the user's slot plus a GET of the catalogue
generation, sent together (`RedisRouter`: one round trip per master). The feedback worker's
`prepare` is a read-only script per user; `apply` is an atomic script per user (events'
dedup marks, sets, history, kinds, seq, vector and the TTL of it all, or nothing), then
one script per like-count shard that counts each LIKE once (its own mark per event), so a
crash between the two is completed by the replay's `prepare`. Key names and their
migration: docs/decisions/0037-redis-cluster-keys.md. `#!lua` flags need Redis >= 7.0.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
import zlib
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import (
    DEDUP_TTL_S,
    HISTORY_LENGTH,
    PREFERENCE_KINDS,
    STATE_TTL_S,
    CatalogueItems,
    CatalogueState,
    Conflict,
    PendingBatch,
    UserFeedback,
    UserState,
    decode_history,
)
from shortlist.feedback.stores.redis_router import RedisRouter, RedisTLS

LIKE_SHARDS = 16  # hash tags the item like counts are spread over
USER_KEYS = ("seen", "dis", "hist", "likes", "kinds", "vec")  # a user's state (with ev:*)

# What a request needs of a user: vector (for the bundle version), seen and disliked sets,
# recent history, live like count. KEYS: the user's kinds key. ARGV: user base, version.
STATE_LUA = """#!lua flags=no-writes
local base = ARGV[1]
return {
  redis.call('HGET', base .. 'vec', ARGV[2]),
  redis.call('SMEMBERS', base .. 'seen'),
  redis.call('SMEMBERS', base .. 'dis'),
  redis.call('LRANGE', base .. 'hist', 0, -1),
  redis.call('GET', base .. 'likes'),
}
"""

# A user's `kinds` hash maps item id -> latest kind, and field "" (never an item id: ids
# are non-empty) counts the applies that touched the user (its `seq`).

# Read half of a batch for one user, answered as one string: a flag byte per event id
# ("1": already applied), then a header (seq, vector length, kinds length, kinds mode:
# 4+4+4+1 bytes, big-endian), the stored vector (empty when absent or when the whole state
# is asked for) and the kinds: with a vector, one character per batch item ("0": none),
# mode 0; else all of them, as "<kind><item>" lines (mode 1) or, when an item id holds a
# newline, as <item length (4 bytes)><kind><item> entries (mode 2).
# KEYS: the user's kinds key. ARGV: user base, version, complete ("1"/"0"), n event ids,
# event ids..., then the batch's items.
PREPARE_LUA = """#!lua flags=no-writes
local base, ver, complete = ARGV[1], ARGV[2], ARGV[3] == '1'
local n = tonumber(ARGV[4])
local out = {}
for lo = 1, n, 500 do
  local keys = {}
  for j = lo, math.min(lo + 499, n) do
    keys[#keys + 1] = base .. 'ev:' .. ARGV[4 + j]
  end
  local marks = redis.call('MGET', unpack(keys))
  for j = 1, #keys do
    out[#out + 1] = marks[j] and '1' or '0'
  end
end
local first = 5 + n
local vec = false
if not complete then
  vec = redis.call('HGET', base .. 'vec', ver)
end
local seq, kinds, mode = '0', nil, 0
if vec then
  local chars = {}
  seq = redis.call('HGET', base .. 'kinds', '') or '0'
  for lo = first, #ARGV, 500 do
    local part = redis.call('HMGET', base .. 'kinds', unpack(ARGV, lo, math.min(lo + 499, #ARGV)))
    for j = 1, #part do
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
return table.concat(out)
"""

# Write half for one user, atomic: a script runs to the end before Redis serves anyone
# else, and it checks before its first write, so it applies all of the user's events
# (marks, sets, history, counters, kinds, vector, seq, and the state TTL refreshed on every
# key) or writes nothing and answers a conflict. With a seq to check, an unchanged seq
# means nobody applied anything for the user since prepare found the events new; without,
# every event id is checked.
# KEYS: the user's kinds key. ARGV: user base, version, dedup ttl, history length, state
# ttl (0: none), check seq ("1"/"0"), expected seq, vector bytes ("" leaves it), then per
# event: id, item, kind
APPLY_LUA = """#!lua
local base, ver, ttl = ARGV[1], ARGV[2], ARGV[3]
local keep, state_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local check, expected, vec = ARGV[6] == '1', ARGV[7], ARGV[8]
local LIKE, DISLIKE = '@LIKE@', '@DISLIKE@'
if check then
  if (redis.call('HGET', base .. 'kinds', '') or '0') ~= expected then
    return {0, 'changed since prepare'}
  end
else
  for k = 9, #ARGV, 3 do
    if redis.call('EXISTS', base .. 'ev:' .. ARGV[k]) == 1 then
      return {0, 'event ' .. ARGV[k] .. ' is already applied'}
    end
  end
end
local function many(cmd, key, values, step)
  local r
  for lo = 1, #values, step do
    r = redis.call(cmd, key, unpack(values, lo, math.min(lo + step - 1, #values)))
  end
  return r
end
local items, hist, kinds, disliked, order, likes = {}, {}, {}, {}, {}, 0
for k = 9, #ARGV, 3 do
  local item, kind = ARGV[k + 1], ARGV[k + 2]
  redis.call('SET', base .. 'ev:' .. ARGV[k], 1, 'EX', ttl)
  items[#items + 1] = item
  hist[#hist + 1] = kind .. ':' .. item
  kinds[#kinds + 1] = item
  kinds[#kinds + 1] = kind
  if kind == DISLIKE or kind == LIKE then
    if disliked[item] == nil then
      order[#order + 1] = item
    end
    disliked[item] = kind == DISLIKE
  end
  if kind == LIKE then
    likes = likes + 1
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
if #hist > 0 and many('LPUSH', base .. 'hist', hist, 500) > keep then
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
  redis.call('HSET', base .. 'vec', ver, vec)
end
if state_ttl > 0 then
  for _, name in ipairs({@USER_KEYS@}) do
    redis.call('EXPIRE', base .. name, state_ttl)
  end
end
return {1, ''}
"""
APPLY_LUA = (
    APPLY_LUA.replace("@LIKE@", str(int(Kind.LIKE)))
    .replace("@DISLIKE@", str(int(Kind.DISLIKE)))
    .replace("@USER_KEYS@", ", ".join(f"'{k}'" for k in USER_KEYS))
)

# Item like counts of one shard, each change counted once: a change whose mark is already
# set is skipped (a replay), else applied and marked; a count that reaches 0 is removed.
# KEYS: the shard's likes hash. ARGV: mark base, mark ttl, then per change: mark, item,
# delta
LIKES_LUA = """#!lua
local key, marks, ttl = KEYS[1], ARGV[1], ARGV[2]
for k = 3, #ARGV, 3 do
  if redis.call('SET', marks .. ARGV[k], 1, 'NX', 'EX', ttl) then
    if redis.call('HINCRBY', key, ARGV[k + 1], ARGV[k + 2]) <= 0 then
      redis.call('HDEL', key, ARGV[k + 1])
    end
  end
end
return 0
"""

# A FORGET event for one user, atomic: nothing when its id is marked; else the user's keys
# deleted and the id marked. (Their part in the like counts and in new items' feedback is
# taken off before, idempotently.) KEYS: the user's kinds key. ARGV: user base, event id,
# dedup ttl
FORGET_LUA = """#!lua
local base, id, ttl = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', base .. 'ev:' .. id) == 1 then
  return 0
end
for _, name in ipairs({@USER_KEYS@}) do
  redis.call('DEL', base .. name)
end
redis.call('SET', base .. 'ev:' .. id, 1, 'EX', ttl)
return 1
""".replace("@USER_KEYS@", ", ".join(f"'{k}'" for k in USER_KEYS))

# The live catalogue, all under the tag {cat}: gen (change counter), hidden and removed
# (sets), attrs (hash item -> attributes JSON), updated (hash item -> last changing
# upsert, ms), fb:<item> (new items' feedback: hash user -> kind), vec:<version> (new items'
# vectors: hash item -> float32 bytes) and versions (the set of those versions). KEYS of
# every script: the gen key; ARGV[1]: the base. Changes are one script each (atomic)
# answering how many items changed; any change moves gen. Upsert's ARGV[2]: the time in ms.
UPSERT_LUA = """#!lua
local p, now, n = ARGV[1], ARGV[2], 0
for j = 3, #ARGV, 2 do
  if redis.call('SISMEMBER', p .. 'removed', ARGV[j]) == 0
      and redis.call('HGET', p .. 'attrs', ARGV[j]) ~= ARGV[j + 1] then
    redis.call('HSET', p .. 'attrs', ARGV[j], ARGV[j + 1])
    redis.call('HSET', p .. 'updated', ARGV[j], now)
    n = n + 1
  end
end
if n > 0 then redis.call('INCR', p .. 'gen') end
return n
"""
HIDE_LUA = """#!lua
local p, n = ARGV[1], 0
for j = 2, #ARGV do
  if redis.call('SISMEMBER', p .. 'removed', ARGV[j]) == 0 then
    n = n + redis.call('SADD', p .. 'hidden', ARGV[j])
  end
end
if n > 0 then redis.call('INCR', p .. 'gen') end
return n
"""
SHOW_LUA = """#!lua
local p, n = ARGV[1], 0
for j = 2, #ARGV do
  n = n + redis.call('SREM', p .. 'hidden', ARGV[j])
end
if n > 0 then redis.call('INCR', p .. 'gen') end
return n
"""
# Removing also deletes the item's attributes, feedback and vectors of every version.
REMOVE_LUA = """#!lua
local p, n = ARGV[1], 0
local versions = redis.call('SMEMBERS', p .. 'versions')
for j = 2, #ARGV do
  local item = ARGV[j]
  if redis.call('SADD', p .. 'removed', item) == 1 then
    n = n + 1
    redis.call('SREM', p .. 'hidden', item)
    redis.call('HDEL', p .. 'attrs', item)
    redis.call('HDEL', p .. 'updated', item)
    redis.call('DEL', p .. 'fb:' .. item)
    for _, version in ipairs(versions) do
      redis.call('HDEL', p .. 'vec:' .. version, item)
    end
  end
end
if n > 0 then redis.call('INCR', p .. 'gen') end
return n
"""
# Users' kinds on new items (not removed), in event order. ARGV: base, state ttl, then
# per event: item, user, kind
ITEM_KINDS_LUA = """#!lua
local p, ttl = ARGV[1], tonumber(ARGV[2])
for k = 3, #ARGV, 3 do
  if redis.call('SISMEMBER', p .. 'removed', ARGV[k]) == 0 then
    redis.call('HSET', p .. 'fb:' .. ARGV[k], ARGV[k + 1], ARGV[k + 2])
    if ttl > 0 then redis.call('EXPIRE', p .. 'fb:' .. ARGV[k], ttl) end
  end
end
return 0
"""
# A forgotten user's kinds taken off new items' feedback. ARGV: base, user, items...
FORGET_ITEMS_LUA = """#!lua
local p, user = ARGV[1], ARGV[2]
for j = 3, #ARGV do
  redis.call('HDEL', p .. 'fb:' .. ARGV[j], user)
end
return 0
"""
# New items' feedback: per item (removed ones left out) its id, then user, kind pairs.
# ARGV: base, items...
ITEM_FEEDBACK_LUA = """#!lua flags=no-writes
local p, out = ARGV[1], {}
for j = 2, #ARGV do
  local item = ARGV[j]
  if redis.call('SISMEMBER', p .. 'removed', item) == 0 then
    local all = redis.call('HGETALL', p .. 'fb:' .. item)
    if #all > 0 then
      table.insert(all, 1, item)
      out[#out + 1] = all
    end
  end
end
return out
"""
# One consistent snapshot of the catalogue for a version. ARGV: base, version
CATALOGUE_LUA = """#!lua flags=no-writes
local p = ARGV[1]
return {
  redis.call('GET', p .. 'gen'),
  redis.call('SMEMBERS', p .. 'hidden'),
  redis.call('SMEMBERS', p .. 'removed'),
  redis.call('HGETALL', p .. 'vec:' .. ARGV[2]),
}
"""
# The catalogue's items for request-time rules, one snapshot: gen, attrs, updated (hash
# item -> last changing upsert, ms), hidden and removed. ARGV: base
CATALOGUE_ITEMS_LUA = """#!lua flags=no-writes
local p = ARGV[1]
return {
  redis.call('GET', p .. 'gen'),
  redis.call('HGETALL', p .. 'attrs'),
  redis.call('HGETALL', p .. 'updated'),
  redis.call('SUNION', p .. 'hidden', p .. 'removed'),
}
"""
# New items' vectors for a version. ARGV: base, version, then item, vector pairs
ITEM_VECTORS_LUA = """#!lua
local p, ver = ARGV[1], ARGV[2]
for j = 3, #ARGV, 2 do
  redis.call('HSET', p .. 'vec:' .. ver, ARGV[j], ARGV[j + 1])
end
redis.call('SADD', p .. 'versions', ver)
redis.call('INCR', p .. 'gen')
return 0
"""
# A retired version's new-item vectors. ARGV: base, version
DROP_ITEM_VECTORS_LUA = """#!lua
redis.call('UNLINK', ARGV[1] .. 'vec:' .. ARGV[2])
redis.call('SREM', ARGV[1] .. 'versions', ARGV[2])
return 0
"""

# The feedback consumer's offsets, one hash per master (written after the batch's state on
# that master, so an AOF that lost its tail lost the offset with the state). Per partition:
# a stored offset below where the batch starts is a gap (state lost since): answered, not
# written; else the offset moves forward (next 0: only check). KEYS: the hash. ARGV: per
# partition: field, from, next. Answer: field, stored pairs of the gaps.
OFFSETS_LUA = """#!lua
local gaps = {}
for k = 1, #ARGV, 4 do
  local stored = tonumber(redis.call('HGET', KEYS[1], ARGV[k]))
  local from, next, log_end = tonumber(ARGV[k + 1]), tonumber(ARGV[k + 2]), tonumber(ARGV[k + 3])
  if stored and log_end >= 0 and stored > log_end then
    -- more was consumed than the log now holds: the log was made again, start over on it
    redis.call('HSET', KEYS[1], ARGV[k], math.min(math.max(from, next), log_end))
  elseif stored and stored < from then
    gaps[#gaps + 1] = ARGV[k]
    gaps[#gaps + 1] = tostring(stored)
  elseif next > 0 and (not stored or stored < next) then
    redis.call('HSET', KEYS[1], ARGV[k], next)
  end
end
return gaps
"""

SCRIPTS = {
    "state": STATE_LUA,
    "prepare": PREPARE_LUA,
    "apply": APPLY_LUA,
    "likes": LIKES_LUA,
    "forget": FORGET_LUA,
    "upsert": UPSERT_LUA,
    "hide": HIDE_LUA,
    "show": SHOW_LUA,
    "remove": REMOVE_LUA,
    "item_kinds": ITEM_KINDS_LUA,
    "forget_items": FORGET_ITEMS_LUA,
    "item_feedback": ITEM_FEEDBACK_LUA,
    "catalogue": CATALOGUE_LUA,
    "catalogue_items": CATALOGUE_ITEMS_LUA,
    "item_vectors": ITEM_VECTORS_LUA,
    "drop_item_vectors": DROP_ITEM_VECTORS_LUA,
    "offsets": OFFSETS_LUA,
}
SHAS = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}
_HEADER = struct.Struct(">IIIB")
_LENGTH = struct.Struct(">I")


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


def like_shard(item_id: str) -> int:
    """The shard of an item's live like count."""
    return zlib.crc32(item_id.encode()) % LIKE_SHARDS


def _pairs(reply: list | dict) -> dict[bytes, bytes]:
    """An HGETALL reply as a dict (a map in RESP3, a flat list in RESP2 and from Lua)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2]))


class RedisStateStore:
    """Keys (under `prefix`): {u:<user>}:seen / :dis (sets), :hist (list), :vec (hash
    version -> float32 bytes), :likes (counter), :kinds (hash item -> latest kind, and "" ->
    applies so far), :ev:<event id> (dedup mark, per user); {il:<n>}:likes (hash item ->
    live likes, the item's shard n), {il:<n>}:ev:<digest> (like-count marks); the
    catalogue under {cat}: (see UPSERT_LUA). A user's keys expire `state_ttl_s` after
    their last write (0: never)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "sl:",
        timeout_s: float = 0.5,
        state_ttl_s: int = STATE_TTL_S,
        tls: RedisTLS | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"redis prefix must not hold braces (hash tags), got {prefix!r}")
        self.prefix = prefix
        self.state_ttl_s = state_ttl_s
        self.router = RedisRouter(url, timeout_s, {SHAS[n]: t for n, t in SCRIPTS.items()}, tls=tls)
        self._cat = f"{prefix}{{cat}}:"

    # --- key names ---------------------------------------------------------------------

    def user_key(self, user_id: str, what: str) -> str:
        """The name of one of a user's keys (`what`: one of USER_KEYS, or ev:<event id>)."""
        return f"{self.prefix}{{u:{user_id}}}:{what}"

    def _shard_key(self, shard: int) -> str:
        return f"{self.prefix}{{il:{shard}}}:likes"

    def _script(self, name: str, key: str, args: Sequence) -> tuple[str, list]:
        """A routed EVALSHA of script `name` declaring `key` (its slot's key)."""
        return key, ["EVALSHA", SHAS[name], 1, key, *args]

    def _user_script(self, name: str, user_id: str, args: Sequence) -> tuple[str, list]:
        base = self.user_key(user_id, "")
        return self._script(name, base + "kinds", [base, *args])

    def _cat_script(self, name: str, args: Sequence) -> tuple[str, list]:
        return self._script(name, self._cat + "gen", [self._cat, *args])

    def _one(self, command: tuple[str, list], operation: str):
        return self.router.execute([command], operation)[0]

    # --- reads -------------------------------------------------------------------------

    def ping(self) -> None:
        self.router.ping()

    def user_state(self, user_id: str, version: str) -> UserState:
        gen_key = self._cat + "gen"
        (raw_vec, seen, disliked, hist, likes), generation = self.router.execute(
            [self._user_script("state", user_id, [version]), (gen_key, ["GET", gen_key])],
            "user_state",
        )
        return UserState(
            vector=None if raw_vec is None else np.frombuffer(raw_vec, np.float32).copy(),
            seen={s.decode() for s in seen},
            disliked={s.decode() for s in disliked},
            history=[decode_history(h) for h in hist],
            likes=int(likes or 0),
            catalogue_generation=int(generation or 0),
        )

    def item_likes(self) -> dict[str, int]:
        keys = [self._shard_key(n) for n in range(LIKE_SHARDS)]
        replies = self.router.execute([(k, ["HGETALL", k]) for k in keys], "item_likes")
        return {item.decode(): int(n) for flat in replies for item, n in _pairs(flat).items()}

    # --- the feedback worker -----------------------------------------------------------

    def prepare(
        self, events: Sequence[Event], version: str = "", complete: bool = False
    ) -> PendingBatch:
        by_user: dict[str, list[int]] = {}
        for n, e in enumerate(events):
            by_user.setdefault(e.user_id, []).append(n)
        commands, plan = [], []
        for user, positions in by_user.items():
            batch_items = list(dict.fromkeys(events[n].item_id for n in positions))
            args: list = [version, "1" if complete else "0", len(positions)]
            args += [events[n].event_id for n in positions]
            if not complete:
                args += batch_items
            commands.append(self._user_script("prepare", user, args))
            plan.append((user, positions, batch_items))
        replies = self.router.execute(commands, "prepare")
        new = [False] * len(events)
        users: dict[str, UserFeedback] = {}
        for reply, (user, positions, batch_items) in zip(replies, plan):
            for n, flag in zip(positions, reply):
                new[n] = flag == 48
            pos = len(positions)
            seq, n_vec, n_kinds, mode = _HEADER.unpack_from(reply, pos)
            pos += _HEADER.size
            vec = np.frombuffer(reply, np.float32, n_vec // 4, pos).copy() if n_vec else None
            pos += n_vec
            kinds = _kinds_of(mode, reply[pos : pos + n_kinds], batch_items)
            users[user] = UserFeedback(seq=seq, vector=vec, kinds=kinds, complete=vec is None)
        # Likes already applied (a replay): their counts may not have been written when
        # the process stopped between the user's write and the count's; count them now
        # (each once: the count keeps its own marks).
        replayed = [e for e, fresh in zip(events, new) if not fresh and e.kind == Kind.LIKE]
        if replayed:
            self._count_likes([(e.user_id, e.event_id, e.item_id, 1) for e in replayed])
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
        # New items' feedback first: idempotent, and read by their fold-in after the apply.
        kinds: list = []
        for e in events:
            if e.kind in PREFERENCE_KINDS and e.item_id in new_items:
                kinds += [e.item_id, e.user_id, int(e.kind)]
        if kinds:
            self._one(self._cat_script("item_kinds", [self.state_ttl_s, *kinds]), "apply")
        head = [version, DEDUP_TTL_S, HISTORY_LENGTH, self.state_ttl_s]
        head.append("0" if expected is None else "1")
        commands = []
        for user, user_events in by_user.items():
            vec = vectors.get(user)
            args = [
                *head,
                0 if expected is None else expected.get(user, 0),
                b"" if vec is None else np.asarray(vec, np.float32).tobytes(),
            ]
            for e in user_events:
                args += [e.event_id, e.item_id, int(e.kind)]
            commands.append(self._user_script("apply", user, args))
        replies = self.router.execute(commands, "apply")
        conflicts, likes = [], []
        for (ok, reason), (user, user_events) in zip(replies, by_user.items()):
            if not ok:
                conflicts.append(f"user {user}: {reason.decode(errors='replace')}")
                continue
            likes += [(user, e.event_id, e.item_id, 1) for e in user_events if e.kind == Kind.LIKE]
        if likes:
            self._count_likes(likes)
        if conflicts:
            raise Conflict("; ".join(conflicts))

    def _count_likes(self, changes: Sequence[tuple[str, str, str, int]]) -> None:
        """Add (user, event id, item, delta) changes to the like counts, each once."""
        by_shard: dict[int, list] = {}
        for user, event_id, item, delta in changes:
            mark = hashlib.blake2b(
                f"{len(user)}:{user}:{event_id}".encode(), digest_size=12
            ).hexdigest()
            by_shard.setdefault(like_shard(item), []).extend((mark, item, delta))
        commands = []
        for shard, args in by_shard.items():
            marks = f"{self.prefix}{{il:{shard}}}:ev:"
            commands.append(
                self._script("likes", self._shard_key(shard), [marks, DEDUP_TTL_S, *args])
            )
        self.router.execute(commands, "count_likes")

    def forget(self, event: Event) -> bool:
        user = event.user_id
        mark, kinds_key = self.user_key(user, "ev:" + event.event_id), self.user_key(user, "kinds")
        marked, flat = self.router.execute(
            [(kinds_key, ["EXISTS", mark]), (kinds_key, ["HGETALL", kinds_key])], "forget"
        )
        if marked:
            return False
        kinds = {i.decode(): int(k) for i, k in _pairs(flat).items() if i}
        # Their part in the counts and in new items' feedback first (idempotent), then the
        # user's own keys and the mark, atomically: a crash between them replays all.
        liked = [i for i, k in kinds.items() if k == Kind.LIKE]
        if liked:
            self._count_likes([(user, f"{event.event_id}\0{i}", i, -1) for i in liked])
        if kinds:
            self._one(self._cat_script("forget_items", [user, *kinds]), "forget")
        return bool(
            self._one(self._user_script("forget", user, [event.event_id, DEDUP_TTL_S]), "forget")
        )

    def drop_vectors(self, version: str) -> int:
        """SCAN for users' vector hashes and HDEL the version, 1,000 users a round trip."""
        pattern = f"{_glob_escape(self.prefix)}{{u:*}}:vec"
        keys = self.router.scan(pattern)
        dropped = 0
        for lo in range(0, len(keys), 1000):
            commands = [(k, ["HDEL", k, version]) for k in keys[lo : lo + 1000]]
            dropped += sum(self.router.execute(commands, "drop_vectors"))
        self._one(self._cat_script("drop_item_vectors", [version]), "drop_vectors")
        return dropped

    def record_offsets(
        self,
        group: str,
        ranges: Mapping[tuple[str, int], tuple[int, int]],
        log_ends: Mapping[tuple[str, int], int] | None = None,
    ) -> dict[tuple[str, int], int]:
        """Store each partition's next offset on every master, after the state it
        describes (call it once the batch is applied). Answers the partitions whose
        stored offset on some master is below the `from` of their (from, next) range - that
        master lost writes since (an AOF's lost tail, a failover) - with the lowest one:
        consume again from there (nothing is written for those)."""
        if not ranges:
            return {}
        args: list = []
        for (topic, partition), (start, end) in ranges.items():
            log_end = (log_ends or {}).get((topic, partition))
            args += [f"{partition}:{topic}", start, end, -1 if log_end is None else log_end]
        replies = self.router.execute(
            [self._script("offsets", k, args) for k in self._offset_keys(group)], "offsets"
        )
        gaps: dict[tuple[str, int], int] = {}
        for reply in replies:
            for field, stored in _pairs(reply).items():
                partition, _, topic = field.decode().partition(":")
                tp = (topic, int(partition))
                gaps[tp] = min(int(stored), gaps.get(tp, int(stored)))
        return gaps

    def _offset_keys(self, group: str) -> list[str]:
        """One offsets hash per master (tags {off:<n>} picked so that each master has one)."""
        name = f"{self.prefix}{{off:%d}}:offsets:{group}"
        if not self.router.cluster:
            return [name % 0]
        client = self.router.client
        masters = {n.name for n in client.get_primaries()}
        keys: dict[str, str] = {}
        for n in range(1024):
            key = name % n
            keys.setdefault(client.get_node_from_key(key).name, key)
            if len(keys) == len(masters):
                break
        return list(keys.values())

    # --- the catalogue -----------------------------------------------------------------

    def catalogue_generation(self) -> int:
        key = self._cat + "gen"
        return int(self._one((key, ["GET", key]), "catalogue") or 0)

    def catalogue(self, version: str) -> CatalogueState:
        generation, hidden, removed, vectors = self._one(
            self._cat_script("catalogue", [version]), "catalogue"
        )
        removed_ids = {i.decode() for i in removed}
        return CatalogueState(
            generation=int(generation or 0),
            hidden={i.decode() for i in hidden} | removed_ids,
            removed=removed_ids,
            vectors={
                i.decode(): np.frombuffer(v, np.float32).copy() for i, v in _pairs(vectors).items()
            },
        )

    def upsert_items(self, items: Mapping[str, Mapping[str, str]]) -> int:
        args: list = [int(time.time() * 1000)]
        for item, attributes in items.items():
            args += [item, json.dumps(dict(attributes), sort_keys=True)]
        return int(self._one(self._cat_script("upsert", args), "upsert_items"))

    def catalogue_items(self) -> CatalogueItems:
        generation, attrs, updated, hidden = self._one(
            self._cat_script("catalogue_items", []), "catalogue_items"
        )
        return CatalogueItems(
            generation=int(generation or 0),
            attributes={i.decode(): json.loads(v) for i, v in _pairs(attrs).items()},
            updated_ms={i.decode(): int(v) for i, v in _pairs(updated).items()},
            hidden={i.decode() for i in hidden},
        )

    def item_attributes(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        if not item_ids:
            return {}
        key = self._cat + "attrs"
        values = self._one((key, ["HMGET", key, *item_ids]), "item_attributes")
        return {i: json.loads(v) for i, v in zip(item_ids, values) if v is not None}

    def hide_items(self, item_ids: Sequence[str]) -> int:
        return int(self._one(self._cat_script("hide", item_ids), "hide_items"))

    def show_items(self, item_ids: Sequence[str]) -> int:
        return int(self._one(self._cat_script("show", item_ids), "show_items"))

    def remove_items(self, item_ids: Sequence[str]) -> int:
        n = int(self._one(self._cat_script("remove", item_ids), "remove_items"))
        by_shard: dict[int, list[str]] = {}
        for item in item_ids:  # their live like counts too (idempotent)
            by_shard.setdefault(like_shard(item), []).append(item)
        commands = [
            (self._shard_key(s), ["HDEL", self._shard_key(s), *items])
            for s, items in by_shard.items()
        ]
        if commands:
            self.router.execute(commands, "remove_items")
        return n

    def item_feedback(
        self, item_ids: Sequence[str], version: str
    ) -> dict[str, dict[str, tuple[int, np.ndarray | None]]]:
        if not item_ids:
            return {}
        entries = self._one(self._cat_script("item_feedback", item_ids), "item_feedback")
        users = sorted({u.decode() for entry in entries for u in entry[1::2]})
        keys = [self.user_key(u, "vec") for u in users]
        raws = self.router.execute([(k, ["HGET", k, version]) for k in keys], "item_feedback")
        vectors = {
            u: None if raw is None else np.frombuffer(raw, np.float32).copy()
            for u, raw in zip(users, raws)
        }
        out: dict[str, dict[str, tuple[int, np.ndarray | None]]] = {}
        for entry in entries:
            out[entry[0].decode()] = {
                u.decode(): (int(k), vectors[u.decode()]) for u, k in _pairs(entry[1:]).items()
            }
        return out

    def set_item_vectors(self, vectors: Mapping[str, np.ndarray], version: str) -> None:
        if not vectors:
            return
        args: list = [version]
        for item, vec in vectors.items():
            args += [item, np.asarray(vec, np.float32).tobytes()]
        self._one(self._cat_script("item_vectors", args), "set_item_vectors")

    def close(self) -> None:
        self.router.close()


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
