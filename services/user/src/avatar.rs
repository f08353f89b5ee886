//! Avatar thumbnails: every profile the server sends carries a small re-encoded copy of the
//! avatar (the original is kept as a file), so a big avatar never rides along in pushes, member
//! lists or histories. Decoding is the proof that the upload is an image at all.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// Decoding refuses pictures beyond this many pixels a side (decompression bombs).
const MAX_SIDE: u32 = 8192;
/// And beyond this much memory while decoding.
const MAX_DECODE_ALLOC: u64 = 128 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AvatarError {
    #[error("avatar is not a PNG, JPEG, GIF or WebP image")]
    NotAnImage,
    #[error("avatar image is damaged or too large to decode: {0}")]
    Undecodable(String),
    #[error("avatar cannot be made smaller than {0} bytes")]
    TooDetailed(usize),
}

/// A thumbnail of `bytes` at most `side` x `side` pixels and at most `max_bytes` long: PNG when
/// that fits (keeps transparency), else JPEG at falling quality.
pub fn thumbnail(bytes: &[u8], side: u32, max_bytes: usize) -> Result<Vec<u8>, AvatarError> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|_| AvatarError::NotAnImage)?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {}
        _ => return Err(AvatarError::NotAnImage),
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| AvatarError::Undecodable(e.to_string()))?;
    let small = if image.width() > side || image.height() > side { image.thumbnail(side, side) } else { image };
    let png = encode(&small, None)?;
    if png.len() <= max_bytes {
        return Ok(png);
    }
    let rgb = DynamicImage::ImageRgb8(small.to_rgb8());
    for quality in [85, 70, 50, 30, 15] {
        let jpeg = encode(&rgb, Some(quality))?;
        if jpeg.len() <= max_bytes {
            return Ok(jpeg);
        }
    }
    Err(AvatarError::TooDetailed(max_bytes))
}

fn encode(image: &DynamicImage, jpeg_quality: Option<u8>) -> Result<Vec<u8>, AvatarError> {
    let mut out = Vec::new();
    let result = match jpeg_quality {
        None => image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png),
        Some(q) => image.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q)),
    };
    result.map_err(|e| AvatarError::Undecodable(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise_png(w: u32, h: u32) -> Vec<u8> {
        let mut seed = 0x2545_f491_u32;
        let img = image::RgbImage::from_fn(w, h, |_, _| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            image::Rgb([seed as u8, (seed >> 8) as u8, (seed >> 16) as u8])
        });
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn big_noisy_pictures_become_small_thumbnails() {
        let big = noise_png(900, 600);
        assert!(big.len() > 1_000_000, "{}", big.len());
        let thumb = thumbnail(&big, 128, 32 * 1024).unwrap();
        assert!(thumb.len() <= 32 * 1024, "{}", thumb.len());
        let decoded = image::load_from_memory(&thumb).unwrap();
        assert!(decoded.width() <= 128 && decoded.height() <= 128);
        assert_eq!(decoded.width(), 128, "the aspect ratio is kept");
    }

    #[test]
    fn non_images_are_refused() {
        assert_eq!(thumbnail(b"hello, not a picture", 128, 32 * 1024), Err(AvatarError::NotAnImage));
        let mut truncated = noise_png(64, 64);
        truncated.truncate(200);
        assert!(matches!(thumbnail(&truncated, 128, 32 * 1024), Err(AvatarError::Undecodable(_))));
    }
}
