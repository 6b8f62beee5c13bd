//! EXIF orientation lookup, shared by the JPEG, PNG and WebP loaders.

/// The EXIF Orientation (1–8) in a TIFF-structured EXIF payload (without the `Exif\0\0`
/// prefix). Anything unreadable counts as 1: a broken EXIF block must not fail a render
/// whose pixels are fine.
pub fn orientation(tiff: &[u8]) -> u8 {
    let Ok(exif) = exif::Reader::new().read_raw(tiff.to_vec()) else {
        return 1;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|field| field.value.get_uint(0))
        .filter(|v| (1..=8).contains(v))
        .map_or(1, |v| v as u8)
}

/// Strip the `Exif\0\0` header a JPEG APP1 segment (and some WebP/PNG writers) put in front.
pub fn strip_exif_header(data: &[u8]) -> &[u8] {
    data.strip_prefix(b"Exif\0\0").unwrap_or(data)
}
