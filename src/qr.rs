//! The app link as a QR code for a terminal (`id --qr`): two rows of modules per line of text
//! with the half-block characters, so the code is square on a usual terminal font.
//!
//! Encoding and drawing are the `qrcode` crate's (its `Dense1x2` renderer). Light modules are
//! drawn, dark ones left blank: on the usual light-on-dark terminal that shows dark modules
//! dark, as a camera expects, with the 4-module quiet zone the standard asks for around them.

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// `text` as lines of `' '`, `'▀'`, `'▄'` and `'█'` (a drawn half is a light module), each
/// ending in a line feed.
pub fn terminal_qr(text: &str) -> Result<String, String> {
    // Medium error correction: survives a smudged screen and keeps the code small.
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| format!("cannot encode {text:?} as a QR code: {e}"))?;
    let mut out = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::terminal_qr;

    /// Read a terminal rendering back into (light) modules and decode it with a QR decoder.
    fn decode(rendered: &str) -> String {
        let rows: Vec<Vec<char>> = rendered.lines().map(|l| l.chars().collect()).collect();
        let width = rows[0].len();
        let mut light = Vec::new();
        for row in &rows {
            assert_eq!(row.len(), width, "ragged lines");
            let (mut top, mut bottom) = (Vec::new(), Vec::new());
            for c in row {
                let (t, b) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                };
                top.push(t);
                bottom.push(b);
            }
            light.push(top);
            light.push(bottom);
        }
        // A camera's view: 6 pixels per module, dark modules black.
        const SCALE: usize = 6;
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(
            width * SCALE,
            light.len() * SCALE,
            |x, y| match light[y / SCALE][x / SCALE] {
                true => 255,
                false => 0,
            },
        );
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code");
        grids[0].decode().expect("the code decodes").1
    }

    #[test]
    fn the_link_decodes_back() {
        let link = "https://app.music-assistant.io/?remote_id=QCPJJTJMI3IDBNURU6XJJENRYU";
        let rendered = terminal_qr(link).unwrap();
        assert_eq!(decode(&rendered), link);
        // Square: twice as many module rows as lines, give or take the odd one.
        let lines = rendered.lines().count();
        let cols = rendered.lines().next().unwrap().chars().count();
        assert!(cols.div_ceil(2) == lines, "{cols} columns, {lines} lines");
    }

    #[test]
    fn too_long_a_text_is_an_error() {
        assert!(terminal_qr(&"x".repeat(5000)).is_err());
    }
}
