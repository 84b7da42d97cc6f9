"""The memory bank of tracklet re-id embeddings (preallocated slots, a ring cache per tracklet,
the fused embedding each match compares against)."""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import TrackerConfig


def _temporal_weights(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.range(0, 1, 1/length)[1:]`` of the released code: (1/length, 2/length, ..., 1)."""
    return (torch.arange(1, length + 1, dtype=torch.float64, device=device) * (1.0 / length)).to(dtype)


class _MemoryBank:
    """The tracklet memory, stored in preallocated slots (capacity doubling) so that a frame's update
    is a handful of batched gathers and ``index_copy_`` calls, and a dead tracklet only frees its
    slot. ``order`` lists the live slots in insertion order (the released dict order, which the
    match matrix columns and the bi-softmax over them follow).

    The per-slot cache holds the last ``max_cache`` entries, like the released list ``append`` +
    ``pop(0)``, and only what the embedding type reads: the L2-normalised embeddings
    (similarity_guided: the released code normalises the cached embeddings again every frame;
    normalising each once gives the same values), or the raw embeddings plus the score as an extra
    channel (temporally_weighted); nothing otherwise. similarity_guided only sums over its entries,
    so they form a ring (the new entry overwrites the oldest in place, see ``cache_position``); the
    temporal weights depend on recency, so temporally_weighted keeps its entries right-aligned (the
    newest last, zeros before the first) and appending is a shift. Empty positions hold zeros.
    """

    def __init__(self, config: TrackerConfig, embed_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 64):
        self.config = config
        self.embed_dim = embed_dim
        self.order = np.zeros(0, dtype=np.int64)                    # (M,) live slots, insertion order
        self.slot_ids = np.full(capacity, -1, dtype=np.int64)        # id held by each slot
        self.exist_frames = np.zeros(capacity, dtype=np.int64)       # frames seen, per slot
        self.last_frame = np.zeros(capacity, dtype=np.int64)
        self.slot_of_id = np.full(0, -1, dtype=np.int64)             # track id -> slot or -1
        self.free_slots: list[int] = []
        self.used_slots = 0                                          # slots ever handed out
        channels = {"similarity_guided": embed_dim, "temporally_weighted": embed_dim + 1}.get(config.embed_type, 0)
        self.cache = torch.zeros(capacity, config.max_cache, channels, dtype=dtype, device=device)  # (S, L, c)
        self.fused_embeds = torch.zeros(capacity, embed_dim, dtype=dtype, device=device)            # (S, C)
        if config.embed_type == "temporally_weighted":
            # (L+1, L): right-aligned temporal weights of a cache holding c entries, row c.
            self.temporal_table = torch.zeros(config.max_cache + 1, config.max_cache, dtype=dtype, device=device)
            for length in range(1, config.max_cache + 1):
                self.temporal_table[length, config.max_cache - length:] = _temporal_weights(length, dtype, device)

    def __len__(self) -> int:
        return int(self.order.shape[0])

    # Every update of a slot writes one cache entry, so the cache state follows from exist_frames.
    def cache_length(self, slots: np.ndarray) -> np.ndarray:
        """(n,) valid cache entries of the slots (before this frame's update)."""
        return np.minimum(self.exist_frames[slots], self.config.max_cache)

    def cache_position(self, slots: np.ndarray) -> np.ndarray:
        """(n,) ring position the next similarity_guided entry goes to (the oldest, or an empty one)."""
        return self.exist_frames[slots] % self.config.max_cache

    @property
    def ids(self) -> np.ndarray:
        """(M,) tracklet ids in insertion order."""
        return self.slot_ids[self.order]

    def live_exist_frames(self) -> np.ndarray:
        return self.exist_frames[self.order]

    def matching_embeds(self) -> Tensor:
        """(M, C) the embedding each tracklet is matched with, in insertion order."""
        order = torch.from_numpy(self.order).to(self.fused_embeds.device)
        if self.config.embed_type != "temporally_weighted":
            return self.fused_embeds.index_select(0, order)
        # weights = cached scores + (1/c, ..., 1) over the c cached frames; zero in empty positions
        # (their score and temporal weight are both 0), so no mask is needed.
        rows = self.cache.index_select(0, order)                                       # (M, L, C+1)
        lengths = torch.from_numpy(self.cache_length(self.order)).to(order.device)
        weights = rows[:, :, self.embed_dim] + self.temporal_table.index_select(0, lengths)
        return (rows[:, :, :self.embed_dim] * weights[:, :, None]).sum(1) / weights.sum(1, keepdim=True)

    def _allocate(self, track_ids: np.ndarray) -> np.ndarray:
        """Slots for new tracklets (zeroed), appended to the insertion order."""
        num_new = track_ids.size
        reused = [self.free_slots.pop() for _ in range(min(num_new, len(self.free_slots)))]
        fresh = np.arange(self.used_slots, self.used_slots + num_new - len(reused), dtype=np.int64)
        self.used_slots += fresh.size
        capacity = self.slot_ids.size
        if self.used_slots > capacity:
            grown = max(self.used_slots, 2 * capacity)
            extra = grown - capacity
            self.slot_ids = np.concatenate([self.slot_ids, np.full(extra, -1, dtype=np.int64)])
            for name in ("exist_frames", "last_frame"):
                setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, dtype=np.int64)]))
            self.cache = torch.cat([self.cache, self.cache.new_zeros(extra, *self.cache.shape[1:])])
            self.fused_embeds = torch.cat([self.fused_embeds, self.fused_embeds.new_zeros(extra, self.embed_dim)])
        slots = np.concatenate([np.array(reused, dtype=np.int64), fresh])
        if reused and self.cache.shape[2]:
            self.cache.index_fill_(0, torch.tensor(reused, device=self.cache.device), 0)
        self.slot_ids[slots] = track_ids
        self.exist_frames[slots] = 0
        largest = int(track_ids.max()) + 1
        if self.slot_of_id.size < largest:
            grown_ids = np.full(max(largest, 2 * self.slot_of_id.size), -1, dtype=np.int64)
            grown_ids[: self.slot_of_id.size] = self.slot_of_id
            self.slot_of_id = grown_ids
        self.slot_of_id[track_ids] = slots
        self.order = np.concatenate([self.order, slots])
        return slots

    def update(self, track_ids: np.ndarray, scores: Tensor | None, embeds: Tensor, frame_index: int) -> None:
        """Record one frame's detections. track_ids: (n,) unique, each live or brand new (new ids
        in increasing order); scores: (n,) (read by temporally_weighted only); embeds: (n, C)."""
        if track_ids.size == 0:
            return
        known = track_ids < self.slot_of_id.size
        slots = np.full(track_ids.size, -1, dtype=np.int64)
        slots[known] = self.slot_of_id[track_ids[known]]
        new = slots < 0
        if new.any():
            slots[new] = self._allocate(track_ids[new])
        self._update_embeddings(slots, new, scores, embeds)
        self.exist_frames[slots] += 1
        self.last_frame[slots] = frame_index

    def _update_embeddings(self, slots: np.ndarray, new: np.ndarray, scores: Tensor | None, embeds: Tensor) -> None:
        """Fuse the new embeddings into the slots' matching embeddings and append them to the caches,
        for every matched tracklet at once (the released code loops over tracklets)."""
        config = self.config
        device = embeds.device
        slots_t = torch.from_numpy(slots).to(device)
        first_time = torch.from_numpy(new).to(device)[:, None]

        if config.embed_type == "similarity_guided":
            # beta = max(0, mean cosine(new, cached previous embeds)); fused = (1-beta)*fused + beta*new.
            # Empty cache positions hold zeros: their cosine is 0 and adds nothing to the sum.
            unit = F.normalize(embeds, dim=-1)
            cos = torch.bmm(self.cache.index_select(0, slots_t), unit[:, :, None])[:, :, 0]   # (n, L)
            count = torch.from_numpy(self.cache_length(slots).clip(min=1)).to(device)
            similarity = cos.sum(1) / count
            beta = torch.where(similarity > 0, similarity, torch.zeros((), dtype=cos.dtype, device=device))[:, None]
            fused = (1 - beta) * self.fused_embeds.index_select(0, slots_t) + beta * embeds
            self.fused_embeds.index_copy_(0, slots_t, torch.where(first_time, embeds, fused))
            # Ring cache: the new entry overwrites the oldest.
            self.cache[slots_t, torch.from_numpy(self.cache_position(slots)).to(device)] = unit
        elif config.embed_type == "momentum":
            fused = (1 - config.momentum) * self.fused_embeds.index_select(0, slots_t) + config.momentum * embeds
            self.fused_embeds.index_copy_(0, slots_t, torch.where(first_time, embeds, fused))
        elif config.embed_type == "last":
            self.fused_embeds.index_copy_(0, slots_t, embeds)
        else:  # temporally_weighted: append to the right-aligned caches; the oldest entry falls off.
            entry = torch.cat([embeds, scores.to(embeds.dtype)[:, None]], dim=1)               # (n, C+1)
            cache_rows = self.cache.index_select(0, slots_t)                                  # (n, L, C+1)
            self.cache.index_copy_(0, slots_t, torch.cat([cache_rows[:, 1:], entry[:, None]], dim=1))

    def drop_dead(self, frame_index: int) -> None:
        alive = frame_index - self.last_frame[self.order] <= self.config.num_dead_frames
        if alive.all():
            return
        dead = self.order[~alive]
        self.slot_of_id[self.slot_ids[dead]] = -1
        self.slot_ids[dead] = -1
        self.free_slots.extend(dead.tolist())
        self.order = self.order[alive]
