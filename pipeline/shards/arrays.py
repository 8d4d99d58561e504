"""Arrow arrays to and from numpy, built on their buffers.

pyarrow's general converters (`pa.array`, `Array.to_numpy`, `pa.table`) first ask whether their input or output is a
pandas object, which imports pandas: a quarter of a second of a one-row run that never touches pandas. The shards hold
only int32/int64 columns, lists of them and strings, without nulls; for those, the buffers are the whole array.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64}


def numeric_array(values: np.ndarray, type: pa.DataType) -> pa.Array:
    """An int32 or int64 Arrow array holding `values` (converted to its type), without nulls."""
    data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[type])
    return pa.Array.from_buffers(type, len(data), [None, pa.py_buffer(data)])


def string_array(texts: list[str]) -> pa.Array:
    """A utf-8 string Arrow array of `texts`, without nulls."""
    encoded = [text.encode("utf-8") for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def numpy_view(array: pa.Array) -> np.ndarray:
    """The values of an int32 or int64 array without nulls as a zero-copy numpy view; anything else through
    pyarrow's own conversion."""
    dtype = _NUMPY_TYPES.get(array.type)
    if dtype is None or array.null_count:
        return array.to_numpy(zero_copy_only=False)
    data = array.buffers()[1]
    if data is None:  # an empty array may have no buffer
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype)[array.offset : array.offset + len(array)]
