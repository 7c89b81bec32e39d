//! Reading the columns of the documents table out of Arrow record batches; a column of the wrong
//! type means the store was not written by tttnn, which names the store.
use std::path::Path;

use arrow_array::{
    Array, FixedSizeListArray, Float32Array, LargeStringArray, RecordBatch, StringArray,
    UInt64Array,
};

use crate::error::{Error, Result};

/// A SQL string literal for a Lance filter.
pub(crate) fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn column_error(store: &Path, name: &str, wanted: &str) -> Error {
    Error::bad_file(store, format!("column `{name}` is missing or not {wanted}"))
}

/// The embedding column of a batch.
pub(crate) fn embedding_column<'a>(
    store: &Path,
    b: &'a RecordBatch,
) -> Result<&'a FixedSizeListArray> {
    b.column_by_name("embedding")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
        .ok_or_else(|| column_error(store, "embedding", "a FixedSizeList"))
}

/// Row `i` of an embedding column.
pub(crate) fn embedding_at(
    store: &Path,
    column: &FixedSizeListArray,
    i: usize,
) -> Result<Vec<f32>> {
    let values = column.value(i);
    values
        .as_any()
        .downcast_ref::<Float32Array>()
        .map(|v| v.values().to_vec())
        .ok_or_else(|| column_error(store, "embedding", "a list of Float32"))
}

/// A UInt64 column's values.
pub(crate) fn u64_column(store: &Path, b: &RecordBatch, name: &str) -> Result<Vec<u64>> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .map(|a| a.values().to_vec())
        .ok_or_else(|| column_error(store, name, "UInt64"))
}

/// A Float32 column's values.
pub(crate) fn f32_column(store: &Path, b: &RecordBatch, name: &str) -> Result<Vec<f32>> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
        .map(|a| a.values().to_vec())
        .ok_or_else(|| column_error(store, name, "Float32"))
}

/// A Utf8 or LargeUtf8 column's values.
pub(crate) fn string_column(store: &Path, b: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| column_error(store, name, "a string column"))?;
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return Ok((0..a.len()).map(|i| a.value(i).to_string()).collect());
    }
    if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
        return Ok((0..a.len()).map(|i| a.value(i).to_string()).collect());
    }
    Err(column_error(store, name, "a string column"))
}
