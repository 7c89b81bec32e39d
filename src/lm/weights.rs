//! Loads HF safetensors weights into a `VarStore` by their HF names, from `model.safetensors` or a
//! sharded `model.safetensors.index.json`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{Error, Result};

/// The safetensors files of an HF model directory.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&index, e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_file(&index, "no `weight_map` object"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    Err(Error::bad_file(
        dir,
        "no model.safetensors or model.safetensors.index.json",
    ))
}

/// Whether the variable `name` is a LoRA adapter's (`...q_proj.lora_A.weight`).
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Copies every variable of `vs` but the LoRA adapters from the model directory's safetensors
/// files.
///
/// A variable `a.b.c` is also looked up without its first component (`b.c`): the original
/// `gpt2` checkpoints name their tensors `h.0.attn...` where `save_pretrained` writes
/// `transformer.h.0.attn...`.
pub fn load(vs: &VarStore, dir: &Path) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in safetensors_files(dir)? {
        check_safetensors(&f)?;
        // The file is the user's: whatever libtorch cannot read in it is bad input.
        let read = Tensor::read_safetensors(&f)
            .map_err(|e| Error::bad_file(&f, format!("not a readable safetensors file: {e}")))?;
        for (name, t) in read {
            tensors.insert(name, t);
        }
    }
    let mut missing = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vs.variables() {
            if is_adapter(&name) {
                continue; // LoRA adapters are not in the checkpoint; they start from their init.
            }
            let alt = name.split_once('.').map(|(_, rest)| rest.to_string());
            let src = tensors
                .get(&name)
                .or_else(|| alt.as_ref().and_then(|a| tensors.get(a)));
            match src {
                Some(t) if t.size() == var.size() => var.copy_(t),
                Some(t) => {
                    return Err(Error::bad_file(
                        dir,
                        format!(
                            "tensor `{name}` has shape {:?}, the config implies {:?}",
                            t.size(),
                            var.size()
                        ),
                    ))
                }
                None => missing.push(name),
            }
        }
        Ok(())
    })?;
    if !missing.is_empty() {
        missing.sort();
        return Err(Error::bad_file(
            dir,
            format!("weights missing from safetensors: {}", missing.join(", ")),
        ));
    }
    Ok(())
}

/// Checks a safetensors file's framing before libtorch reads it: the 8-byte header length, the
/// JSON header, and every tensor's byte range inside the file, so a truncated download is named as
/// one rather than failing inside libtorch.
fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |m: String| Error::bad_file(path, m);
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    if file.read_exact(&mut n).is_err() {
        return Err(bad(format!(
            "truncated safetensors file: {len} bytes, no header"
        )));
    }
    let header_len = u64::from_le_bytes(n);
    if header_len > len - 8 {
        return Err(bad(format!(
            "truncated or corrupt safetensors file: its header says {header_len} bytes, the file has {len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("corrupt safetensors header: {e}")))?;
    let data = len - 8 - header_len;
    let mut end = 0;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|o| o.as_u64())
            .ok_or_else(|| {
                bad(format!(
                    "corrupt safetensors header: tensor `{name}` has no data_offsets"
                ))
            })?;
        end = end.max(offsets);
    }
    if end > data {
        return Err(bad(format!(
            "truncated safetensors file: its tensors need {end} bytes of data, the file holds {data}"
        )));
    }
    Ok(())
}

/// Content hash of a model directory's weights, config and tokenizer: the first 16 hex digits of
/// BLAKE3 over the files in name order, recorded with each run.
pub fn content_hash(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.ends_with(".safetensors") || name == "config.json" || name == "tokenizer.json"
        })
        .collect();
    files.sort();
    let mut h = blake3::Hasher::new();
    for f in &files {
        let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        h.update_reader(file).map_err(|e| Error::io(f, e))?;
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_corrupt_safetensors_are_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let t = Tensor::from_slice(&[1.0f32; 64]);
        Tensor::write_safetensors(&[("w", &t)], &p).unwrap();
        check_safetensors(&p).unwrap();
        let full = std::fs::read(&p).unwrap();
        for (cut, says) in [
            (
                full.len() - 10,
                "truncated safetensors file: its tensors need 256 bytes",
            ),
            (4, "no header"),
            (40, "its header says"),
        ] {
            std::fs::write(&p, &full[..cut]).unwrap();
            let e = check_safetensors(&p).unwrap_err();
            assert_eq!(e.exit_code(), 1);
            assert!(e.to_string().contains(says), "{e}");
        }
        let mut corrupt = full.clone();
        corrupt[9] = b'#';
        std::fs::write(&p, &corrupt).unwrap();
        assert!(check_safetensors(&p)
            .unwrap_err()
            .to_string()
            .contains("corrupt safetensors header"));
    }
}
