//! CRLM-Net v1 as five ONNX graphs (opset 17), written from a package's safetensors weights.
//! Every operator is one that ONNX Runtime's CPU and CUDA providers and TensorRT run natively
//! (Conv, Relu, GlobalAveragePool, Gemm, Softmax, MatMul, Tanh, Sigmoid, Mul, Add, Sub, Concat,
//! Slice, Reshape, Transpose, Unsqueeze); with [`ActivationRanges`] the convolutions become INT8
//! QDQ (QuantizeLinear/DequantizeLinear) groups, symmetric with zero points 0 so TensorRT's
//! explicit quantisation accepts them as well as ONNX Runtime.

use super::quantize::{ActivationRanges, ConvRanges, quantize_bias, quantize_weights};
use super::{Dim, GraphBuilder, OnnxError, attr_int, attr_ints};
use crate::package::spec::{ModelSpec, OnnxGraphSpec, OnnxPrecision, OnnxSpec};
use crate::package::{self, ModelPackage, PackageError};
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// fp32 tensors of a safetensors file by name.
pub struct Weights(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Weights {
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, OnnxError> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| OnnxError::Weights(e.to_string()))?;
        let mut map = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(OnnxError::Weights(format!("{name}: {:?}, expected F32", view.dtype())));
            }
            let v = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            map.insert(name, (view.shape().to_vec(), v));
        }
        Ok(Weights(map))
    }

    /// A tensor that must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32], OnnxError> {
        match self.0.get(name) {
            Some((s, v)) if s == shape => Ok(v),
            Some((s, _)) => Err(OnnxError::Weights(format!("{name} is {s:?}, CRLM-Net v1 wants {shape:?}"))),
            None => Err(OnnxError::Weights(format!("{name} is missing"))),
        }
    }
}

/// A graph of the package: its file name, interface and bytes.
pub struct ExportedGraph {
    pub part: &'static str,
    pub spec: OnnxGraphSpec,
    pub bytes: Vec<u8>,
}

fn io(file: String, inputs: &[&str], outputs: &[&str]) -> OnnxGraphSpec {
    OnnxGraphSpec {
        file,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
    }
}

struct Ctx<'a> {
    w: &'a Weights,
    /// Convolutions left in fp32 in an INT8 export.
    keep_fp32: &'a [String],
}

impl Ctx<'_> {
    /// A Linear layer's weight and bias as initializers.
    fn linear(&self, g: &mut GraphBuilder, name: &str, in_: usize, out: usize) -> Result<(String, String), OnnxError> {
        let w = self.w.get(&format!("{name}.weight"), &[out, in_])?;
        let b = self.w.get(&format!("{name}.bias"), &[out])?;
        Ok((g.f32s(&format!("{name}.weight"), &[out, in_], w), g.f32s(&format!("{name}.bias"), &[out], b)))
    }

    fn apply_linear(
        &self,
        g: &mut GraphBuilder,
        x: &str,
        name: &str,
        in_: usize,
        out: usize,
        dst: Option<&str>,
    ) -> Result<String, OnnxError> {
        let (w, b) = self.linear(g, name, in_, out)?;
        Ok(g.linear(x, &w, &b, dst))
    }

    /// Three stride-2 3x3 convolutions with ReLU, then the spatial mean: `[N, C, H, W]` -> `[N, c3]`.
    /// With ranges, each convolution is a QDQ group: Q/DQ on its input, int8 per-channel
    /// weights, int32 bias, and Q/DQ on its output before the ReLU.
    fn conv_stack(
        &self,
        g: &mut GraphBuilder,
        x: &str,
        prefix: &str,
        cin: usize,
        channels: [usize; 3],
        ranges: Option<&ConvRanges>,
    ) -> Result<String, OnnxError> {
        let mut x = x.to_string();
        let mut c_prev = cin;
        let zero_i8 = ranges.map(|_| g.i8s(&format!("{prefix}.zero_i8"), &[], &[0]));
        for (i, c) in channels.into_iter().enumerate() {
            let name = format!("{prefix}.conv{}", i + 1);
            let wshape = [c, c_prev, 3, 3];
            let w = self.w.get(&format!("{name}.weight"), &wshape)?;
            let b = self.w.get(&format!("{name}.bias"), &[c])?;
            let attrs = || {
                vec![
                    attr_ints("kernel_shape", &[3, 3]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                    attr_ints("strides", &[2, 2]),
                ]
            };
            let y = match (ranges, &zero_i8) {
                (Some(r), Some(z)) if !self.keep_fp32.contains(&name) => {
                    let s_in = r.scale_in(i);
                    let s_in_name = g.f32s(&format!("{name}.input_scale"), &[], &[s_in]);
                    let q = g.node("QuantizeLinear", &[&x, &s_in_name, z], vec![], None);
                    let dq = g.node("DequantizeLinear", &[&q, &s_in_name, z], vec![], None);
                    let (wq, ws) = quantize_weights(w, c);
                    let wq_name = g.i8s(&format!("{name}.weight_quantized"), &wshape, &wq);
                    let ws_name = g.f32s(&format!("{name}.weight_scale"), &[c], &ws);
                    let wz_name = g.i8s(&format!("{name}.weight_zero"), &[c], &vec![0; c]);
                    let wdq =
                        g.node("DequantizeLinear", &[&wq_name, &ws_name, &wz_name], vec![attr_int("axis", 0)], None);
                    let (bq, bs) = quantize_bias(b, s_in, &ws);
                    let bq_name = g.i32s(&format!("{name}.bias_quantized"), &[c], &bq);
                    let bs_name = g.f32s(&format!("{name}.bias_scale"), &[c], &bs);
                    let bz_name = g.i32s(&format!("{name}.bias_zero"), &[c], &vec![0; c]);
                    let bdq =
                        g.node("DequantizeLinear", &[&bq_name, &bs_name, &bz_name], vec![attr_int("axis", 0)], None);
                    let conv = g.node("Conv", &[&dq, &wdq, &bdq], attrs(), None);
                    let s_out_name = g.f32s(&format!("{name}.output_scale"), &[], &[r.scale_out(i)]);
                    let q = g.node("QuantizeLinear", &[&conv, &s_out_name, z], vec![], None);
                    g.node("DequantizeLinear", &[&q, &s_out_name, z], vec![], None)
                }
                _ => {
                    let w_name = g.f32s(&format!("{name}.weight"), &wshape, w);
                    let b_name = g.f32s(&format!("{name}.bias"), &[c], b);
                    g.node("Conv", &[&x, &w_name, &b_name], attrs(), None)
                }
            };
            x = g.node("Relu", &[&y], vec![], None);
            c_prev = c;
        }
        let pooled = g.node("GlobalAveragePool", &[&x], vec![], None);
        Ok(g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)], None))
    }

    /// Softmax over N of `[N, 1]` logits and the weighted sum of `[N, E]` rows, as in
    /// `net::attend`: returns (`[1, E]`, `[N]`).
    fn attend(
        &self,
        g: &mut GraphBuilder,
        logits: &str,
        rows: &str,
        pooled: Option<&str>,
        attention: &str,
    ) -> (String, String) {
        let t = g.node("Transpose", &[logits], vec![attr_ints("perm", &[1, 0])], None);
        let a = g.node("Softmax", &[&t], vec![attr_int("axis", 1)], None);
        let p = g.node("MatMul", &[&a, rows], vec![], pooled);
        let flat = g.i64s("attention_shape", &[1], &[-1]);
        let att = g.node("Reshape", &[&a, &flat], vec![], Some(attention));
        (p, att)
    }
}

const META_KEYS: &str = "crlm.part";

/// Export every part. `ranges` makes the CT and tile encoders INT8 (QDQ); the attention,
/// clinical and fusion parts stay fp32 (small, and where the risk is most sensitive).
pub fn export(
    spec: &ModelSpec,
    weights: &[u8],
    ranges: Option<&ActivationRanges>,
) -> Result<(OnnxSpec, Vec<ExportedGraph>), OnnxError> {
    let w = Weights::from_safetensors(weights)?;
    let keep: &[String] = ranges.map(|r| r.keep_fp32.as_slice()).unwrap_or_default();
    let ctx = Ctx { w: &w, keep_fp32: keep };
    let n = spec.network.as_ref().ok_or_else(|| {
        OnnxError::Weights("a format 2 package is already ONNX parts; export is for CRLM-Net v1 weights".into())
    })?;
    let e = n.embed;
    let [x, y, z] = spec.ct.shape;
    let t = spec.slide.tile_px as usize;
    let c = spec.clinical.width();
    // Only the encoders are quantised; their files say so.
    let file = |part: &str| match (ranges.is_some(), part) {
        (true, "ct_encoder" | "tile_encoder") => format!("onnx/{part}_int8.onnx"),
        _ => format!("onnx/{part}.onnx"),
    };
    let precision = if ranges.is_some() { "int8" } else { "fp32" };
    let meta =
        |part: &'static str| [(META_KEYS, part), ("crlm.architecture", "crlm-net-v1"), ("crlm.precision", precision)];
    let fixed = |v: usize| Dim::Fixed(v as i64);
    let mut graphs = Vec::new();

    // CT encoder: [Z, Y, X] -> per-slice CNN -> slice attention -> [1, E], [Z].
    {
        let mut g = GraphBuilder::new("crlm_ct_encoder");
        let input = g.input("ct", &[fixed(z), fixed(y), fixed(x)]);
        let axes = g.i64s("unsqueeze_axes", &[1], &[1]);
        let x4 = g.node("Unsqueeze", &[&input, &axes], vec![], None);
        let f = ctx.conv_stack(&mut g, &x4, "ct.conv", 1, n.ct_channels, ranges.map(|r| &r.ct))?;
        let c3 = n.ct_channels[2];
        let h = ctx.apply_linear(&mut g, &f, "ct.attn1", c3, n.attention_hidden, None)?;
        let h = g.node("Tanh", &[&h], vec![], None);
        let logits = ctx.apply_linear(&mut g, &h, "ct.attn2", n.attention_hidden, 1, None)?;
        let (pooled, _) = ctx.attend(&mut g, &logits, &f, None, "attention");
        let p = ctx.apply_linear(&mut g, &pooled, "ct.proj", c3, e, None)?;
        g.node("Relu", &[&p], vec![], Some("embedding"));
        g.output("embedding", &[fixed(1), fixed(e)]);
        g.output("attention", &[fixed(z)]);
        graphs.push(ExportedGraph {
            part: "ct_encoder",
            spec: io(file("ct_encoder"), &["ct"], &["embedding", "attention"]),
            bytes: g.finish("CRLM-Net v1 CT encoder: per-slice CNN and slice attention", &meta("ct_encoder")),
        });
    }
    // Tile encoder: [N, 3, T, T] -> [N, E].
    {
        let mut g = GraphBuilder::new("crlm_tile_encoder");
        let input = g.input("tiles", &[Dim::n("n"), fixed(3), fixed(t), fixed(t)]);
        let f = ctx.conv_stack(&mut g, &input, "slide.conv", 3, n.tile_channels, ranges.map(|r| &r.tiles))?;
        let p = ctx.apply_linear(&mut g, &f, "slide.proj", n.tile_channels[2], e, None)?;
        g.node("Relu", &[&p], vec![], Some("embeddings"));
        g.output("embeddings", &[Dim::n("n"), fixed(e)]);
        graphs.push(ExportedGraph {
            part: "tile_encoder",
            spec: io(file("tile_encoder"), &["tiles"], &["embeddings"]),
            bytes: g.finish("CRLM-Net v1 tile encoder", &meta("tile_encoder")),
        });
    }
    // Slide pool: gated attention MIL over [N, E] -> [1, E], [N].
    {
        let mut g = GraphBuilder::new("crlm_slide_pool");
        let h = g.input("embeddings", &[Dim::n("n"), fixed(e)]);
        let u = ctx.apply_linear(&mut g, &h, "slide.attn_u", e, n.attention_hidden, None)?;
        let gate = g.node("Sigmoid", &[&u], vec![], None);
        let v = ctx.apply_linear(&mut g, &h, "slide.attn_v", e, n.attention_hidden, None)?;
        let v = g.node("Tanh", &[&v], vec![], None);
        let m = g.node("Mul", &[&v, &gate], vec![], None);
        let logits = ctx.apply_linear(&mut g, &m, "slide.attn_w", n.attention_hidden, 1, None)?;
        ctx.attend(&mut g, &logits, &h, Some("embedding"), "attention");
        g.output("embedding", &[fixed(1), fixed(e)]);
        g.output("attention", &[Dim::n("n")]);
        graphs.push(ExportedGraph {
            part: "slide_pool",
            spec: io(file("slide_pool"), &["embeddings"], &["embedding", "attention"]),
            bytes: g.finish("CRLM-Net v1 gated attention MIL over tile embeddings", &meta("slide_pool")),
        });
    }
    // Clinical encoder: [1, C] -> [1, E].
    {
        let mut g = GraphBuilder::new("crlm_clinical_encoder");
        let input = g.input("clinical", &[fixed(1), fixed(c)]);
        let h = ctx.apply_linear(&mut g, &input, "clinical.fc1", c, n.clinical_hidden, None)?;
        let h = g.node("Relu", &[&h], vec![], None);
        let h = ctx.apply_linear(&mut g, &h, "clinical.fc2", n.clinical_hidden, e, None)?;
        g.node("Relu", &[&h], vec![], Some("embedding"));
        g.output("embedding", &[fixed(1), fixed(e)]);
        graphs.push(ExportedGraph {
            part: "clinical_encoder",
            spec: io(file("clinical_encoder"), &["clinical"], &["embedding"]),
            bytes: g.finish("CRLM-Net v1 clinical MLP", &meta("clinical_encoder")),
        });
    }
    // Fusion: a missing modality (mask 0) is replaced by its learned embedding inside the graph:
    // e' = m * e + (1 - m) * missing, exact for m in {0, 1}.
    {
        let mut g = GraphBuilder::new("crlm_fusion");
        let names = ["ct", "slide", "clinical"];
        let ins: Vec<String> = names.iter().map(|m| g.input(m, &[fixed(1), fixed(e)])).collect();
        let mask = g.input("mask", &[fixed(1), fixed(3)]);
        let one = g.f32s("one", &[], &[1.0]);
        let axes = g.i64s("mask_axes", &[1], &[1]);
        let mut parts = Vec::new();
        for (i, m) in names.iter().enumerate() {
            let missing = w.get(&format!("fusion.missing_{m}"), &[e])?;
            let missing = g.f32s(&format!("fusion.missing_{m}"), &[1, e], missing);
            let st = g.i64s(&format!("mask_start_{m}"), &[1], &[i as i64]);
            let en = g.i64s(&format!("mask_end_{m}"), &[1], &[i as i64 + 1]);
            let mi = g.node("Slice", &[&mask, &st, &en, &axes], vec![], None);
            let inv = g.node("Sub", &[&one, &mi], vec![], None);
            let a = g.node("Mul", &[&ins[i], &mi], vec![], None);
            let b = g.node("Mul", &[&missing, &inv], vec![], None);
            parts.push(g.node("Add", &[&a, &b], vec![], None));
        }
        parts.push(mask.clone());
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let x = g.node("Concat", &refs, vec![attr_int("axis", 1)], None);
        let h = ctx.apply_linear(&mut g, &x, "fusion.fc1", 3 * e + 3, n.fusion_hidden, None)?;
        let h = g.node("Relu", &[&h], vec![], None);
        let l = ctx.apply_linear(&mut g, &h, "fusion.fc2", n.fusion_hidden, n.intervals, None)?;
        g.node("Sigmoid", &[&l], vec![], Some("hazards"));
        g.output("hazards", &[fixed(1), fixed(n.intervals)]);
        graphs.push(ExportedGraph {
            part: "fusion",
            spec: io(file("fusion"), &["ct", "slide", "clinical", "mask"], &["hazards"]),
            bytes: g.finish("CRLM-Net v1 fusion: missing-modality embeddings, MLP, hazards", &meta("fusion")),
        });
    }
    let take = |p: &str| graphs.iter().find(|g| g.part == p).map(|g| g.spec.clone());
    let missing = || OnnxError::Weights("internal: a part was not exported".into());
    let onnx = OnnxSpec {
        precision: if ranges.is_some() { OnnxPrecision::Int8 } else { OnnxPrecision::Fp32 },
        calibration: ranges.map(|r| r.describe()).unwrap_or_default(),
        ct_encoder: take("ct_encoder").ok_or_else(missing)?,
        tile_encoder: take("tile_encoder").ok_or_else(missing)?,
        slide_pool: take("slide_pool").ok_or_else(missing)?,
        clinical_encoder: take("clinical_encoder").ok_or_else(missing)?,
        fusion: take("fusion").ok_or_else(missing)?,
    };
    Ok((onnx, graphs))
}

/// `model.toml` text with its `[onnx]` tables replaced by `onnx`. Line-based so the package's
/// own comments survive; the `[onnx...]` tables are the ones this module writes.
pub fn model_toml_with_onnx(text: &str, onnx: &OnnxSpec) -> Result<String, OnnxError> {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let header = line.trim_start();
        if header.starts_with('[') {
            let name = header.trim_start_matches('[').trim_start();
            skipping = name.starts_with("onnx]") || name.starts_with("onnx.");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    #[derive(serde::Serialize)]
    struct Wrap<'a> {
        onnx: &'a OnnxSpec,
    }
    let table = toml::to_string(&Wrap { onnx }).map_err(|e| OnnxError::Weights(e.to_string()))?;
    out.push_str("\n# ONNX graphs for the onnx backend (`crlm model export-onnx` / `quantize`; docs/BACKENDS.md).\n");
    out.push_str(&table);
    Ok(out)
}

fn io_error(p: &Path, e: std::io::Error) -> PackageError {
    PackageError::Io(format!("{}: {e}", p.display()))
}

/// Write `package` to the new folder `out` with `onnx`'s graphs in place of any it had (the
/// `[onnx]` tables of model.toml rewritten), then sign it with `key`. Returns the new hash.
pub fn write_with_onnx(
    package: &ModelPackage,
    out: &Path,
    onnx: &OnnxSpec,
    graphs: &[ExportedGraph],
    key: &SigningKey,
) -> Result<String, PackageError> {
    if out.exists() && std::fs::read_dir(out).map_err(|e| io_error(out, e))?.next().is_some() {
        return Err(PackageError::Io(format!("{}: exists and is not empty", out.display())));
    }
    let old: Vec<&str> = package.spec.onnx.iter().flat_map(|o| o.parts().map(|(_, g, _, _)| g.file.as_str())).collect();
    let text = std::str::from_utf8(package.file(package::MODEL_TOML).unwrap_or_default())
        .map_err(|_| PackageError::Spec("not UTF-8".into()))?;
    let text = model_toml_with_onnx(text, onnx).map_err(|e| PackageError::Spec(e.to_string()))?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for n in package.files.keys() {
        if n != package::MANIFEST && n != package::SIGNATURE && !old.contains(&n.as_str()) {
            files.insert(n.clone(), package.read(n)?.into_owned());
        }
    }
    files.insert(package::MODEL_TOML.into(), text.into_bytes());
    for g in graphs {
        files.insert(g.spec.file.clone(), g.bytes.clone());
    }
    for (name, bytes) in &files {
        let path = out.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        crlm_core::fsutil::write_atomic(&path, bytes, 0o644).map_err(|e| io_error(&path, e))?;
    }
    let hash = package::sign_dir(out, key)?;
    // The result must verify as a package before anyone relies on it.
    package::parse_spec(files.get(package::MODEL_TOML).map(Vec::as_slice).unwrap_or_default())?;
    Ok(hash)
}
