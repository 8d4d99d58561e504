"""Arrow arrays built on their buffers equal pyarrow's own conversions, and numpy views read them back."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.shards.arrays import numeric_array, numpy_view, string_array


@pytest.mark.parametrize("type", [pa.int32(), pa.int64()])
@pytest.mark.parametrize("values", [[], [0], [3, -1, 2**20, 7]])
def test_numeric_arrays_equal_pyarrows_and_read_back(type, values):
    built = numeric_array(np.array(values, dtype=np.int64), type)
    assert built.equals(pa.array(values, type=type)) and built.null_count == 0
    assert numpy_view(built).tolist() == values
    assert numpy_view(built.slice(1)).tolist() == values[1:]  # an offset into the buffer


@pytest.mark.parametrize("texts", [[], [""], ["a", "", "数据 🙂", "x" * 300]])
def test_string_arrays_equal_pyarrows(texts):
    built = string_array(texts)
    built.validate(full=True)
    assert built.equals(pa.array(texts, type=pa.string()))


def test_a_list_columns_values_are_viewed_without_a_copy():
    column = pa.array([[1, 2], [3]], type=pa.list_(pa.int32()))
    view = numpy_view(column.values)
    assert view.tolist() == [1, 2, 3] and not view.flags.owndata


def test_nulls_and_other_types_go_through_pyarrow():
    assert np.isnan(numpy_view(pa.array([1, None], type=pa.int32()))[1])
    assert numpy_view(pa.array([1.5], type=pa.float64())).tolist() == [1.5]
