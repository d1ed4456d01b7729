"""Weights in one block of transparent huge pages (Linux, CPU).

Decoding reads every weight matrix once per frame (the local decoder's seven times), a few rows at a time, so its
speed is the speed of streaming the weights from memory. With 4 KB pages a 16 MB head spans 4,096 pages whose
translations the other matrices of the frame have pushed out of the TLB by the time it is read again, and the
page walks stall the few-row products. 2 MB pages need 512 times fewer. The weights
are copied into one buffer aligned to 2 MB and advised as huge pages (madvise MADV_HUGEPAGE) before its first
write, so the kernel backs it with huge pages wherever transparent huge pages are not turned off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

import torch

HUGE_PAGE = 2 * 2**20
_MADV_HUGEPAGE = 14  # Linux
_ALIGN = 64  # bytes between tensors in the block: a cache line, and a multiple of every element size
MIN_BYTES = HUGE_PAGE  # less than one huge page: nothing to gain
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool:
    """Linux with transparent huge pages not set to `never`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return "[never]" not in _THP_SETTING.read_text()
    except OSError:
        return False


def _advise_huge_pages(address: int, length: int) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(address, length, _MADV_HUGEPAGE) == 0


def huge_page_buffer(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 CPU tensor of `nbytes` that starts on a 2 MB boundary, advised as huge pages."""
    padded = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    raw = torch.empty(padded + HUGE_PAGE, dtype=torch.uint8)  # large: its own fresh mapping, no page touched yet
    offset = -raw.data_ptr() % HUGE_PAGE
    _advise_huge_pages(raw.data_ptr() + offset, padded)  # a refusal only costs the speed-up
    return raw[offset : offset + nbytes]


def pack_in_huge_pages(holders: list[tuple[object, str]]) -> int:
    """Move the CPU tensors `getattr(obj, name)` into one huge-page block; returns the bytes moved (0: nothing done).

    Pass `(parameter, "data")` for a Parameter: it keeps its identity, so optimizers, state dicts and fused layers
    see the same objects. Works on storages: tensors that share one (the row blocks of a fused matrix, a transposed
    view) keep sharing it, with their offsets and strides. Storages move one at a time, each freed once its tensors
    point into the block, so memory peaks at the model plus its largest storage (pages of the block are only
    backed once written).
    """
    if not huge_pages_available():
        return 0
    sharing: dict[int, list[tuple[object, str]]] = {}  # storage address -> the holders of its tensors
    sizes: dict[int, int] = {}
    for obj, name in holders:
        tensor = getattr(obj, name)
        if tensor is not None and tensor.device.type == "cpu" and tensor.numel():
            storage = tensor.untyped_storage()
            sharing.setdefault(storage.data_ptr(), []).append((obj, name))
            sizes[storage.data_ptr()] = storage.nbytes()
    slots, total = {}, 0
    for address, nbytes in sizes.items():
        slots[address] = total
        total += -(-nbytes // _ALIGN) * _ALIGN
    if total < MIN_BYTES:
        return 0
    block = huge_page_buffer(total)
    block_storage, base = block.untyped_storage(), block.storage_offset()
    for address, members in sharing.items():
        start = slots[address]
        source = getattr(*members[0]).untyped_storage()
        block[start : start + sizes[address]].copy_(torch.empty(0, dtype=torch.uint8).set_(source))
        del source
        for obj, name in members:
            tensor = getattr(obj, name)
            moved = torch.empty(0, dtype=tensor.dtype).set_(
                block_storage, (base + start) // tensor.element_size() + tensor.storage_offset(), tensor.shape,
                tensor.stride())
            setattr(obj, name, moved)
    release_free_memory()  # the small tensors moved leave holes in the heap
    return total


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = 2**20  # bytes from which a block gets its own mapping, handed back to the system when freed


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def map_large_blocks_apart(threshold: int = LARGE_BLOCK) -> bool:
    """From now on give every heap block of `threshold` bytes or more its own mapping, unmapped when freed (glibc's
    M_MMAP_THRESHOLD; False where there is none). Process-wide.

    glibc raises its mapping threshold to the size of each mapped block freed, up to 32 MB, and then serves such
    blocks from the heap. Building a quantised model frees thousands of blocks of 1-32 MB (float rows, dequantised
    matrices of a prefill), and the heap keeps the freed ones resident as long as a block above them lives: a few
    GB on a 3B model. A fixed threshold keeps the heap to small blocks.
    """
    libc = _libc()
    try:
        return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except AttributeError:
        return False


def release_free_memory() -> bool:
    """Hand the free pages of the C heap back to the system (glibc's malloc_trim; False where there is none).

    Building a model one block of rows at a time allocates and frees thousands of blocks of tens of MB between the
    small tensors it keeps. glibc serves blocks up to 32 MB from its heap once one such block was freed, and a heap
    cannot shrink past the tensors kept at its top, so without this the freed blocks stay resident.
    """
    libc = _libc()
    try:
        return libc is not None and bool(libc.malloc_trim(0))
    except AttributeError:
        return False
