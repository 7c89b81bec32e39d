//! Parquet corpora (Hugging Face datasets' shards, e.g. `data/train-00000-of-00004.parquet`): read
//! by row group, only the columns the text and set fields name, a few rows at a time so memory stays
//! flat whatever the file's size. A document's "line" is its 1-based row in the file.
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::jsonl::string_below;
use super::{FieldPath, Fields, Record};
use crate::error::{Error, Result};

/// Rows decoded at a time: small, since one Books3 row can hold megabytes of text.
const BATCH_ROWS: usize = 64;

/// Whether `path` names a Parquet file.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Streams the rows of a Parquet file as records.
pub struct ParquetReader {
    path: PathBuf,
    fields: Fields,
    /// Whether a missing set column is an error (the user named one) or means "no set names".
    set_required: bool,
    batches: ParquetRecordBatchReader,
    /// The 1-based row of the next row the batches yield.
    next_row: u64,
    /// Per row group from the first one read: its last row (1-based) and the file's compressed
    /// bytes up to its end, for progress.
    group_ends: Vec<(u64, u64)>,
    pending: VecDeque<Result<Record>>,
    failed: bool,
}

impl ParquetReader {
    /// Opens `path`, skipping the row groups that hold only rows up to `skip_rows` (a resumed
    /// ingest's); the rows after them come out numbered by their place in the file.
    pub fn open(path: &Path, fields: &Fields, skip_rows: u64) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::bad_file(path, format!("not a readable Parquet file: {e}")))?;
        let meta = builder.metadata().clone();
        let schema = builder.parquet_schema();
        let wanted = |field: &FieldPath| -> Vec<usize> {
            // The leaves on the field's path: the column itself, the struct's child it names, or a
            // string column holding JSON that the rest of the path looks into.
            let parts = field.parts();
            (0..schema.num_columns())
                .filter(|&i| {
                    let leaf = schema.column(i).path().parts().to_vec();
                    let n = leaf.len().min(parts.len());
                    leaf[..n] == parts[..n]
                })
                .collect()
        };
        let text_leaves = wanted(&fields.text);
        let columns = || {
            let names: Vec<String> = builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            names.join(", ")
        };
        if text_leaves.is_empty() {
            return Err(Error::bad_file(
                path,
                format!(
                    "no column `{}` for the text (the file's columns: {}); name it with --text-field",
                    fields.text,
                    columns()
                ),
            ));
        }
        let set_leaves = wanted(&fields.set);
        let set_required = fields.set != FieldPath::default_set();
        if set_leaves.is_empty() && set_required {
            return Err(Error::bad_file(
                path,
                format!(
                    "no column `{}` for the set name (the file's columns: {}); name it with --set-field",
                    fields.set,
                    columns()
                ),
            ));
        }
        let mask = ProjectionMask::leaves(schema, text_leaves.into_iter().chain(set_leaves));
        let (mut first_row, mut bytes) = (0u64, 0u64);
        let mut groups = Vec::new();
        let mut group_ends = Vec::new();
        for (g, rg) in meta.row_groups().iter().enumerate() {
            let rows = rg.num_rows().max(0) as u64;
            bytes += rg.compressed_size().max(0) as u64;
            if first_row + rows > skip_rows {
                if groups.is_empty() {
                    // Rows before the first group read are numbered as if they had been read.
                    group_ends.push((first_row, bytes - rg.compressed_size().max(0) as u64));
                }
                groups.push(g);
                group_ends.push((first_row + rows, bytes));
            }
            first_row += rows;
        }
        let next_row = group_ends.first().map(|g| g.0).unwrap_or(first_row) + 1;
        let batches = builder
            .with_projection(mask)
            .with_row_groups(groups)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| Error::bad_file(path, format!("not a readable Parquet file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            fields: fields.clone(),
            set_required,
            batches,
            next_row,
            group_ends,
            pending: VecDeque::new(),
            failed: false,
        })
    }

    /// Compressed bytes of the file read so far (whole row groups).
    pub fn position(&self) -> u64 {
        let done = self.next_row - 1;
        self.group_ends
            .iter()
            .take_while(|(last, _)| *last <= done)
            .last()
            .map(|g| g.1)
            .unwrap_or(0)
    }

    /// Turns one decoded batch into records (or per-row errors) in row order.
    fn take(&mut self, batch: &RecordBatch) -> Result<()> {
        let bad = |m: String| Error::bad_file(&self.path, m);
        let texts = strings(batch, &self.fields.text)
            .map_err(bad)?
            .ok_or_else(|| bad(format!("no column `{}` for the text", self.fields.text)))?;
        let sets = match strings(batch, &self.fields.set).map_err(bad)? {
            Some(s) => s,
            None if self.set_required => {
                return Err(bad(format!(
                    "no column `{}` for the set name",
                    self.fields.set
                )))
            }
            None => vec![Ok(None); batch.num_rows()],
        };
        for (text, set) in texts.into_iter().zip(sets) {
            let row = self.next_row;
            self.next_row += 1;
            let at = |m: String| Error::bad_row(&self.path, row, m);
            let record = match (text, set) {
                (Ok(Some(text)), Ok(set_name)) => Ok(Record {
                    path: self.path.clone(),
                    line: row,
                    text,
                    set_name,
                }),
                (Ok(None), _) => Err(at(format!("`{}` is null", self.fields.text))),
                (Err(m), _) | (_, Err(m)) => Err(at(m)),
            };
            self.pending.push_back(record);
        }
        Ok(())
    }
}

/// Per row of `batch`, the string at `path`: `Ok(None)` for the whole batch where the column is
/// absent; per row, `Ok(None)` for a null and an error for JSON that does not hold a string there.
#[allow(clippy::type_complexity)]
fn strings(
    batch: &RecordBatch,
    path: &FieldPath,
) -> Result<Option<Vec<Result<Option<String>, String>>>, String> {
    let parts = path.parts();
    let Some(mut array) = batch.column_by_name(&parts[0]).cloned() else {
        return Ok(None);
    };
    let mut null = vec![false; batch.num_rows()];
    let mark_nulls = |a: &ArrayRef, null: &mut Vec<bool>| {
        if let Some(n) = a.logical_nulls() {
            for (i, is_null) in null.iter_mut().enumerate() {
                *is_null |= n.is_null(i);
            }
        }
    };
    mark_nulls(&array, &mut null);
    let mut depth = 1;
    while depth < parts.len() {
        match array.data_type() {
            DataType::Struct(_) => {
                let Some(child) = array.as_struct().column_by_name(&parts[depth]).cloned() else {
                    return Ok(None);
                };
                array = child;
                mark_nulls(&array, &mut null);
                depth += 1;
            }
            // A string column holding JSON objects: the rest of the path is looked up in each.
            t if is_string(t) => {
                let values = utf8(&array)?;
                let column = values.as_string::<i32>();
                return Ok(Some(
                    (0..batch.num_rows())
                        .map(|i| {
                            if null[i] {
                                return Ok(None);
                            }
                            match serde_json::from_str::<serde_json::Value>(column.value(i)) {
                                Ok(v) => string_below(&v, path, depth),
                                Err(_) => Err(format!(
                                    "field `{path}`: `{}` is a string that does not hold JSON",
                                    parts[..depth].join(".")
                                )),
                            }
                        })
                        .collect(),
                ));
            }
            t => {
                return Err(format!(
                    "field `{path}`: column `{}` holds {t}, not a struct",
                    parts[..depth].join(".")
                ))
            }
        }
    }
    if !is_string(array.data_type()) {
        return Err(format!(
            "column `{path}` holds {}, not strings",
            array.data_type()
        ));
    }
    let values = utf8(&array)?;
    let column = values.as_string::<i32>();
    Ok(Some(
        (0..batch.num_rows())
            .map(|i| Ok((!null[i]).then(|| column.value(i).to_string())))
            .collect(),
    ))
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

/// A string column as plain `Utf8` (large, view and dictionary-encoded strings are cast).
fn utf8(a: &ArrayRef) -> Result<ArrayRef, String> {
    if a.data_type() == &DataType::Utf8 {
        return Ok(a.clone());
    }
    arrow_cast::cast(a, &DataType::Utf8)
        .map_err(|e| format!("casting a {} column to strings: {e}", a.data_type()))
}

impl Iterator for ParquetReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            if self.failed {
                return None;
            }
            let batch = match self.batches.next()? {
                Ok(b) => b,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(Error::bad_file(
                        &self.path,
                        format!(
                            "corrupt Parquet data after row {} (rows up to it are read): {e}",
                            self.next_row - 1
                        ),
                    )));
                }
            };
            if let Err(e) = self.take(&batch) {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow_array::{StringArray, StructArray};
    use arrow_schema::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use std::sync::Arc;

    /// Writes `rows` (text, set) to `path` as Parquet with `meta.pile_set_name` a struct child, in
    /// row groups of `group_rows`.
    pub(crate) fn write(path: &Path, rows: &[(Option<&str>, Option<&str>)], group_rows: usize) {
        let sets: StringArray = rows.iter().map(|r| r.1).collect();
        let meta = StructArray::from(vec![(
            Arc::new(Field::new("pile_set_name", DataType::Utf8, true)),
            Arc::new(sets) as ArrayRef,
        )]);
        let texts: StringArray = rows.iter().map(|r| r.0).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("text", DataType::Utf8, true),
            Field::new("meta", meta.data_type().clone(), true),
        ]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(texts), Arc::new(meta)]).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn read(path: &Path, fields: &Fields, skip: u64) -> Vec<Result<Record>> {
        ParquetReader::open(path, fields, skip).unwrap().collect()
    }

    #[test]
    fn rows_are_numbered_in_the_file_and_resumed_by_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train-00000-of-00001.parquet");
        let rows: Vec<(String, &str)> = (0..10)
            .map(|i| {
                (
                    format!("doc {i}"),
                    if i % 2 == 0 { "Github" } else { "ArXiv" },
                )
            })
            .collect();
        let rows: Vec<_> = rows
            .iter()
            .map(|(t, s)| (Some(t.as_str()), Some(*s)))
            .collect();
        write(&p, &rows, 4);
        let all: Vec<Record> = read(&p, &Fields::default(), 0)
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(all.len(), 10);
        assert_eq!(
            (
                all[3].line,
                all[3].text.as_str(),
                all[3].set_name.as_deref()
            ),
            (4, "doc 3", Some("ArXiv"))
        );
        // Skipping 5 rows starts at the group holding row 6 (rows 5..8), numbered as in the file.
        let resumed: Vec<u64> = read(&p, &Fields::default(), 5)
            .into_iter()
            .map(|r| r.unwrap().line)
            .collect();
        assert_eq!(resumed, (5..=10).collect::<Vec<u64>>());
        let r = ParquetReader::open(&p, &Fields::default(), 10).unwrap();
        assert_eq!(r.count(), 0);
    }

    #[test]
    fn null_text_names_the_row_and_missing_columns_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        write(&p, &[(Some("a"), None), (None, Some("Github"))], 10);
        let r = read(&p, &Fields::default(), 0);
        assert_eq!(r[0].as_ref().unwrap().set_name, None);
        let e = r[1].as_ref().unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            format!("{}, row 2: `text` is null", p.display())
        );
        let fields = Fields {
            text: "content".parse().unwrap(),
            ..Fields::default()
        };
        let e = ParquetReader::open(&p, &fields, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("no column `content` for the text (the file's columns: text, meta)"),
            "{e}"
        );
        let fields = Fields {
            set: "source".parse().unwrap(),
            ..Fields::default()
        };
        let e = ParquetReader::open(&p, &fields, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--set-field"), "{e}");
        let fields = Fields {
            set: "text.x".parse().unwrap(),
            ..Fields::default()
        };
        let e = read(&p, &fields, 0);
        let e = e[0].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("row 1: field `text.x`: `text` is a string that does not hold JSON"),
            "{e}"
        );
        std::fs::write(&p, b"PAR1 not really").unwrap();
        let e = ParquetReader::open(&p, &Fields::default(), 0)
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("not a readable Parquet file"), "{e}");
    }
}
