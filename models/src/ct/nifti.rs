//! NIfTI-1 output (`.nii`, or `.nii.gz` by name) with qform and sform in RAS, as 3D Slicer,
//! ITK-SNAP, nibabel and SimpleITK read it. DICOM's LPS becomes RAS by negating x and y.
//! The sform holds the exact voxel-to-world affine (including the shear of a tilted gantry);
//! the qform holds its rigid part. Voxels are INT16 when every HU value is an integer in range
//! (an i16 volume is written as it is), else FLOAT32.

use super::{CtError, CtVolume, volume::Voxels};
use std::io::Write;
use std::path::Path;

/// Write `vol` to `path`; gzip-compressed when the name ends in `.gz`.
pub fn write_nifti(vol: &CtVolume, path: &Path) -> Result<(), CtError> {
    let gz = path.extension().is_some_and(|e| e == "gz");
    // Temp file, fsync, rename, fsync the directory: a crash leaves the old file or the new one.
    crlm_core::fsutil::write_atomic_with(path, 0o644, |w| {
        if gz {
            let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
            write_body(vol, &mut enc)?;
            enc.finish()?;
            Ok(())
        } else {
            write_body(vol, w)
        }
    })?;
    Ok(())
}

/// Header then voxels, streamed in blocks (no second copy of the volume).
fn write_body(vol: &CtVolume, w: &mut impl Write) -> std::io::Result<()> {
    const BLOCK: usize = 1 << 18;
    match &vol.hu {
        // Whole HU as loaded: the bytes are the voxels, little-endian.
        Voxels::Int16(hu) => {
            w.write_all(&header(vol, true))?;
            let mut buf = vec![0u8; BLOCK * 2];
            for block in hu.chunks(BLOCK) {
                let out = &mut buf[..block.len() * 2];
                for (o, v) in out.chunks_exact_mut(2).zip(block) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
                w.write_all(out)?;
            }
            Ok(())
        }
        Voxels::Float32(hu) => write_f32_body(vol, hu, w),
    }
}

/// An f32 volume: INT16 when every value is a whole HU in range after all, else FLOAT32.
fn write_f32_body(vol: &CtVolume, hu: &[f32], w: &mut impl Write) -> std::io::Result<()> {
    // A cast round trip instead of f32::fract (a libm call per voxel: 300 ms here), folded
    // without short-circuit inside each block so that it vectorises.
    let as_int16 = hu.chunks(4096).all(|c| c.iter().fold(true, |all, v| all & (f32::from(*v as i16) == *v)));
    w.write_all(&header(vol, as_int16))?;
    let width = if as_int16 { 2 } else { 4 };
    // Blocks are converted on all cores, one block per core at a time, and written in order.
    const BLOCK: usize = 1 << 18;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut bufs = vec![vec![0u8; BLOCK * width]; threads];
    for group in hu.chunks(BLOCK * threads) {
        let blocks: Vec<&[f32]> = group.chunks(BLOCK).collect();
        std::thread::scope(|s| {
            for (buf, block) in bufs.iter_mut().zip(&blocks) {
                s.spawn(move || convert_block(block, &mut buf[..block.len() * width], as_int16));
            }
        });
        for (buf, block) in bufs.iter().zip(&blocks) {
            w.write_all(&buf[..block.len() * width])?;
        }
    }
    Ok(())
}

/// Voxels to little-endian INT16 (whole HU) or FLOAT32 bytes.
fn convert_block(block: &[f32], out: &mut [u8], as_int16: bool) {
    if as_int16 {
        for (o, v) in out.chunks_exact_mut(2).zip(block) {
            o.copy_from_slice(&(*v as i16).to_le_bytes());
        }
    } else {
        for (o, v) in out.chunks_exact_mut(4).zip(block) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The RAS affine (3 rows of 4) of a volume.
pub fn affine_ras(vol: &CtVolume) -> [[f64; 4]; 3] {
    let mut a = vol.affine_lps();
    for row in a.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    a
}

/// The qform quaternion (b, c, d), qfac, and offsets from the rigid part of the RAS affine,
/// following nifti1_io's mat44_to_quatern.
fn quaternion(vol: &CtVolume) -> ([f64; 3], f64) {
    let [r, c, n] = vol.direction;
    // Rotation columns in RAS.
    let col = |v: [f64; 3]| [-v[0], -v[1], v[2]];
    let (x, y, mut z) = (col(r), col(c), col(n));
    let det =
        x[0] * (y[1] * z[2] - y[2] * z[1]) - y[0] * (x[1] * z[2] - x[2] * z[1]) + z[0] * (x[1] * y[2] - x[2] * y[1]);
    let qfac = if det < 0.0 {
        z = [-z[0], -z[1], -z[2]];
        -1.0
    } else {
        1.0
    };
    let (r11, r12, r13) = (x[0], y[0], z[0]);
    let (r21, r22, r23) = (x[1], y[1], z[1]);
    let (r31, r32, r33) = (x[2], y[2], z[2]);
    let a = r11 + r22 + r33 + 1.0;
    let (b, c, d);
    if a > 0.5 {
        let a = 0.5 * a.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        let (aa, mut bb, mut cc, mut dd);
        if xd > 1.0 {
            bb = 0.5 * xd.sqrt();
            cc = 0.25 * (r12 + r21) / bb;
            dd = 0.25 * (r13 + r31) / bb;
            aa = 0.25 * (r32 - r23) / bb;
        } else if yd > 1.0 {
            cc = 0.5 * yd.sqrt();
            bb = 0.25 * (r12 + r21) / cc;
            dd = 0.25 * (r23 + r32) / cc;
            aa = 0.25 * (r13 - r31) / cc;
        } else {
            dd = 0.5 * zd.sqrt();
            bb = 0.25 * (r13 + r31) / dd;
            cc = 0.25 * (r23 + r32) / dd;
            aa = 0.25 * (r21 - r12) / dd;
        }
        // The quaternion's scalar part must be non-negative (nifti1_io convention).
        if aa < 0.0 {
            bb = -bb;
            cc = -cc;
            dd = -dd;
        }
        b = bb;
        c = cc;
        d = dd;
    }
    ([b, c, d], qfac)
}

fn header(vol: &CtVolume, as_int16: bool) -> Vec<u8> {
    let (datatype, bitpix) = if as_int16 { (4i16, 16i16) } else { (16i16, 32i16) };
    let mut h = vec![0u8; 352];
    let put_i32 = |h: &mut Vec<u8>, off: usize, v: i32| h[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put_i16 = |h: &mut Vec<u8>, off: usize, v: i16| h[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, off: usize, v: f64| h[off..off + 4].copy_from_slice(&(v as f32).to_le_bytes());
    put_i32(&mut h, 0, 348);
    h[38] = b'r'; // regular = 'r'
    let dims = [3i16, vol.columns as i16, vol.rows as i16, vol.slices as i16, 1, 1, 1, 1];
    for (i, d) in dims.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d);
    }
    put_i16(&mut h, 70, datatype);
    put_i16(&mut h, 72, bitpix);
    let (quat, qfac) = quaternion(vol);
    let pixdim = [qfac, vol.spacing[0], vol.spacing[1], vol.spacing[2], 1.0, 1.0, 1.0, 1.0];
    for (i, p) in pixdim.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * i, *p);
    }
    put_f32(&mut h, 108, 352.0); // vox_offset
    put_f32(&mut h, 112, 1.0); // scl_slope
    put_f32(&mut h, 116, 0.0); // scl_inter
    h[123] = 2 | 8; // xyzt_units: mm, s
    let descrip = b"crlm-edge CT volume (HU)";
    h[148..148 + descrip.len()].copy_from_slice(descrip);
    put_i16(&mut h, 252, 1); // qform_code: scanner
    put_i16(&mut h, 254, 1); // sform_code: scanner
    let a = affine_ras(vol);
    put_f32(&mut h, 256, quat[0]);
    put_f32(&mut h, 260, quat[1]);
    put_f32(&mut h, 264, quat[2]);
    put_f32(&mut h, 268, a[0][3]);
    put_f32(&mut h, 272, a[1][3]);
    put_f32(&mut h, 276, a[2][3]);
    for (row, off) in a.iter().zip([280usize, 296, 312]) {
        for (k, v) in row.iter().enumerate() {
            put_f32(&mut h, off + 4 * k, *v);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    // Bytes 348..352: no extensions.
    h
}
