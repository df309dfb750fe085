//! The linking QR code, drawn for people: terminal half-blocks, PNG bytes, a `data:` URL.
//!
//! The terminal form sets its colours explicitly (white light modules on a black
//! background, ANSI), so it reads the same on dark and light terminals. Every form keeps a
//! 4-module quiet zone around the code.

use base64::Engine;
use qrcode::{Color, EcLevel, QrCode};

/// Modules of light border around the code (the QR specification's quiet zone).
pub const QUIET_ZONE: usize = 4;

/// Pixels per module in [`QrImage::to_png`]'s default scale.
pub const DEFAULT_PNG_SCALE: u32 = 8;

/// QR rendering errors.
#[derive(Debug, thiserror::Error)]
pub enum QrRenderError {
    /// The text does not fit in a QR code.
    #[error("cannot encode the QR text: {0}")]
    Encode(qrcode::types::QrError),
    /// PNG encoding failed.
    #[error("cannot encode the PNG: {0}")]
    Png(#[from] png::EncodingError),
    /// The PNG scale is 0 or makes the image too large.
    #[error("PNG scale {0} is out of range (1..=64)")]
    Scale(u32),
}

/// A QR code's module matrix, quiet zone included.
#[derive(Clone, PartialEq, Eq)]
pub struct QrImage {
    /// Modules per side, quiet zone included.
    size: usize,
    /// Row-major, `true` = dark.
    dark: Vec<bool>,
}

impl std::fmt::Debug for QrImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The modules encode the QR text, which holds the ADV secret.
        f.debug_struct("QrImage")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl QrImage {
    /// Encodes `text` (error correction level L, as WhatsApp Web shows it: the text is long).
    pub fn new(text: &str) -> Result<QrImage, QrRenderError> {
        let code =
            QrCode::with_error_correction_level(text, EcLevel::L).map_err(QrRenderError::Encode)?;
        let width = code.width();
        let colors = code.to_colors();
        let size = width + 2 * QUIET_ZONE;
        let mut dark = vec![false; size * size];
        for y in 0..width {
            for x in 0..width {
                dark[(y + QUIET_ZONE) * size + x + QUIET_ZONE] =
                    colors[y * width + x] == Color::Dark;
            }
        }
        Ok(QrImage { size, dark })
    }

    /// Modules per side, quiet zone included.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the module at column `x`, row `y` (quiet zone included) is dark; outside the
    /// image is light.
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        x < self.size && y < self.size && self.dark[y * self.size + x]
    }

    /// Half-block text: each character covers two rows of modules (`▀` upper light, `▄`
    /// lower light, `█` both light, space both dark), drawn white on black with ANSI colours.
    /// One line per two module rows, each ending with a colour reset and `\n`.
    pub fn to_terminal(&self) -> String {
        let mut out = String::new();
        for y in (0..self.size).step_by(2) {
            out.push_str("\x1b[97;40m");
            for x in 0..self.size {
                let top_light = !self.is_dark(x, y);
                let bottom_light = !self.is_dark(x, y + 1) && y + 1 < self.size;
                out.push(match (top_light, bottom_light) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            out.push_str("\x1b[0m\n");
        }
        out
    }

    /// An 8-bit greyscale PNG, `scale` pixels per module (1..=64).
    pub fn to_png(&self, scale: u32) -> Result<Vec<u8>, QrRenderError> {
        if !(1..=64).contains(&scale) {
            return Err(QrRenderError::Scale(scale));
        }
        let scale = scale as usize;
        let side = self.size * scale;
        let side_u32 = u32::try_from(side).map_err(|_| QrRenderError::Scale(scale as u32))?;
        let mut pixels = Vec::with_capacity(side * side);
        for py in 0..side {
            for px in 0..side {
                pixels.push(if self.is_dark(px / scale, py / scale) {
                    0u8
                } else {
                    255u8
                });
            }
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, side_u32, side_u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
        Ok(out)
    }

    /// `data:image/png;base64,…` of [`QrImage::to_png`] at [`DEFAULT_PNG_SCALE`].
    pub fn to_data_url(&self) -> Result<String, QrRenderError> {
        let png = self.to_png(DEFAULT_PNG_SCALE)?;
        Ok(format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "https://wa.me/settings/linked_devices#2@abcDEF123/+=xyz,\
        bm9pc2Uta2V5LXB1YmxpYy0zMi1ieXRlcy0xMjM0NTY=,aWRlbnRpdHkta2V5LXB1YmxpYy0zMmJ5dGVzMTI=,\
        YWR2LXNlY3JldC0zMi1ieXRlcy1hYmNkZWZnaGlqaw==,1";

    fn decode_png(png_bytes: &[u8]) -> (u32, u32, String) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        let (w, h) = (info.width as usize, info.height as usize);
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the image");
        let (_, content) = grids[0].decode().unwrap();
        (info.width, info.height, content)
    }

    #[test]
    fn png_decodes_back_to_the_text() {
        let image = QrImage::new(TEXT).unwrap();
        let png = image.to_png(4).unwrap();
        let (w, h, content) = decode_png(&png);
        assert_eq!(
            (w as usize, h as usize),
            (image.size() * 4, image.size() * 4)
        );
        assert_eq!(content, TEXT);
    }

    #[test]
    fn data_url_holds_the_png() {
        let image = QrImage::new(TEXT).unwrap();
        let url = image.to_data_url().unwrap();
        let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(png, image.to_png(DEFAULT_PNG_SCALE).unwrap());
        assert_eq!(decode_png(&png).2, TEXT);
    }

    #[test]
    fn terminal_blocks_match_the_matrix_with_a_quiet_zone() {
        let code = QrCode::with_error_correction_level(TEXT, EcLevel::L).unwrap();
        let width = code.width();
        let colors = code.to_colors();
        let image = QrImage::new(TEXT).unwrap();
        assert_eq!(image.size(), width + 2 * QUIET_ZONE);
        let text = image.to_terminal();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), image.size().div_ceil(2));
        // Read the modules back from the half-blocks.
        let mut light = vec![vec![false; image.size()]; lines.len() * 2];
        for (row, line) in lines.iter().enumerate() {
            let body = line
                .strip_prefix("\x1b[97;40m")
                .and_then(|l| l.strip_suffix("\x1b[0m"))
                .unwrap();
            let chars: Vec<char> = body.chars().collect();
            assert_eq!(chars.len(), image.size());
            for (x, c) in chars.into_iter().enumerate() {
                let (top, bottom) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                };
                light[2 * row][x] = top;
                light[2 * row + 1][x] = bottom;
            }
        }
        for y in 0..image.size() {
            for x in 0..image.size() {
                let in_code = (QUIET_ZONE..QUIET_ZONE + width).contains(&x)
                    && (QUIET_ZONE..QUIET_ZONE + width).contains(&y);
                let dark =
                    in_code && colors[(y - QUIET_ZONE) * width + (x - QUIET_ZONE)] == Color::Dark;
                assert_eq!(light[y][x], !dark, "module ({x}, {y})");
            }
        }
    }

    #[test]
    fn bad_scales_and_oversized_texts_are_errors() {
        let image = QrImage::new("x").unwrap();
        assert!(matches!(image.to_png(0), Err(QrRenderError::Scale(0))));
        assert!(matches!(image.to_png(65), Err(QrRenderError::Scale(65))));
        assert!(matches!(
            QrImage::new(&"x".repeat(8000)),
            Err(QrRenderError::Encode(_))
        ));
    }
}
