//! File uploads: choose photos, watch their progress, cancel one; each
//! arrives whole or not at all, within the limits the app set (PNG or JPEG,
//! at most 256 KiB), is checked by the handler (is it really an image?),
//! kept on disk, and listed on the page with a flash message.
//!
//! Run: `cargo run --example uploads`, then open the URL it prints. Files
//! go to `target/demo/uploads` (`STATETEMPLATE_UPLOADS` moves them).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use statetemplate::transport::{Upload, UploadOptions};
use statetemplate::{Error, EventCtx};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Files {
    files: Vec<File>,
    note: String,
    clock: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    id: u64,
    name: String,
    size: u64,
    #[serde(rename = "type")]
    kind: String,
}

/// Where kept files go, and how they are numbered.
struct Store {
    dir: PathBuf,
    next: AtomicU64,
}

async fn photo(ctx: EventCtx, up: Upload) -> statetemplate::Result<()> {
    // The browser's type is a guess from the name: look at the bytes.
    let head = up.bytes().await?;
    let png = head.starts_with(b"\x89PNG\r\n\x1a\n");
    let jpeg = head.starts_with(&[0xFF, 0xD8, 0xFF]);
    if !png && !jpeg {
        return Err(Error::user(format!(
            "{} is not a PNG or JPEG image.",
            up.file_name()
        )));
    }
    let store = ctx.state::<Store>()?;
    let id = store.next.fetch_add(1, Ordering::Relaxed);
    let (name, size) = (up.file_name().to_owned(), up.size());
    let kind = if png { "image/png" } else { "image/jpeg" };
    up.persist(
        store
            .dir
            .join(format!("{id}.{}", if png { "png" } else { "jpg" })),
    )
    .await?;
    ctx.session
        .update(|d: &mut Files| {
            d.files.push(File {
                id,
                name: name.clone(),
                size,
                kind: kind.to_owned(),
            });
            Ok(())
        })
        .await?;
    ctx.session
        .flash("success", &format!("{name} is uploaded."))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    common::templates(
        &mut env,
        &[("uploads.html", include_str!("../templates/uploads.html"))],
    )?;
    let engine = common::engine(env, "uploads")?;
    let dir = std::env::var("STATETEMPLATE_UPLOADS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/demo/uploads"));
    let kept = dir.join("files");
    std::fs::create_dir_all(&kept)
        .map_err(|e| Error::store(format!("cannot make {}", kept.display()), e))?;
    println!("uploads are kept in {}", kept.display());
    let next = std::fs::read_dir(&kept)
        .map(|d| d.count() as u64)
        .unwrap_or(0)
        + 1;
    let live = common::live(&engine)
        .client_extras(true)
        .with_state(Store {
            dir: kept,
            next: AtomicU64::new(next),
        })
        .on_upload(
            "photo",
            UploadOptions::new(256 << 10)
                .accept(["image/png", "image/jpeg"])
                .dir(&dir),
            photo,
        );
    let app = common::app(live, "uploads.html", "Uploads", || Files {
        clock: common::clock_text(),
        ..Files::default()
    });
    common::serve(app, 3007).await;
    Ok(())
}
