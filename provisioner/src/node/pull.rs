//! Pulling an image from an OCI registry into the node's content store
//! ([`crate::node::image`]): the reference's manifest (an index gives its linux/amd64
//! one), its config and its layers, each checked against its digest before the store
//! takes it, then the image unpacked once. Blobs already in the store are not fetched
//! again.

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, DescriptorBuilder, Digest, MediaType};

use crate::error::{Error, Result};
use crate::node::image::{is_index, ContentStore, Unpacked};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Plain HTTP (a registry on the provisioning network without TLS).
    pub insecure: bool,
    /// A CA certificate (PEM) its TLS certificate must chain to, instead of the
    /// system's roots.
    pub ca_pem: Option<String>,
    /// A user and password (HTTP basic, or exchanged for a bearer token).
    pub credentials: Option<(String, String)>,
}

/// What a pull came to.
#[derive(Debug)]
pub struct Pulled {
    /// The manifest run (for an index, its linux/amd64 entry).
    pub manifest: Digest,
    /// Blobs fetched (the others were in the store).
    pub fetched: usize,
    /// Bytes fetched.
    pub bytes: u64,
    /// The image unpacked.
    pub image: Unpacked,
}

const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fn failed(
    image: &str,
    what: &str,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error {
    let what = format!("{what} of {image}");
    move |e| Error::Protocol {
        what,
        reason: e.to_string(),
    }
}

/// Pulls `image` (`registry/repository:tag` or `@sha256:...`) into `store` and unpacks
/// it.
pub async fn pull(store: &ContentStore, image: &str, registry: &Registry) -> Result<Pulled> {
    let reference: Reference = image.parse().map_err(|e| Error::Config {
        what: format!("image {image:?}"),
        reason: format!("not a registry/repository:tag or @sha256: reference: {e}"),
    })?;
    // reqwest takes rustls' process-wide provider: ring, as everywhere else here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // With a CA the registry's certificate must chain to it alone; without, to the
    // public roots the image carries (/etc/ssl/certs). A client that cannot be built is
    // an error here, not the panic of a default one.
    let ca: Vec<Certificate> = registry
        .ca_pem
        .iter()
        .map(|pem| Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.as_bytes().to_vec(),
        })
        .collect();
    let client = Client::try_from(ClientConfig {
        protocol: if registry.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        tls_certs_only: ca,
        ..ClientConfig::default()
    })
    .map_err(failed(image, "a registry client"))?;
    let auth = match &registry.credentials {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    let mut fetched = (0, 0);
    let top = fetch_manifest(store, &client, &reference, &auth, image, &mut fetched).await?;
    if is_index(&top) {
        // The platform's manifest, by its digest, when the store does not have it.
        let index = store.index(top.digest())?;
        let chosen =
            crate::node::image::platform_manifest(&index).ok_or_else(|| Error::Protocol {
                what: format!("image {image}"),
                reason: "its index has no linux/amd64 manifest".into(),
            })?;
        if !store.has(chosen.digest()) {
            let by_digest = reference.clone_with_digest(chosen.digest().to_string());
            fetch_manifest(store, &client, &by_digest, &auth, image, &mut fetched).await?;
        }
    }
    let (digest, manifest) = store.manifest(&top)?;
    for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
        if store.has(blob.digest()) {
            continue;
        }
        let tmp = store.download_path(blob.digest())?;
        let out = tokio::fs::File::create(&tmp)
            .await
            .map_err(crate::error::io("creating", &tmp))?;
        let d = blob.digest().to_string();
        // A registry sending more than the descriptor says is cut off there, not
        // written until the disk is full.
        let out = Bounded {
            inner: out,
            left: blob.size(),
        };
        if let Err(e) = client
            .pull_blob(&reference, d.as_str(), out)
            .await
            .map_err(failed(image, &format!("blob {d}")))
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let (s, digest, size) = (store.clone(), blob.digest().clone(), blob.size());
        blocking(move || s.adopt(&digest, size, &tmp)).await?;
        fetched.0 += 1;
        fetched.1 += blob.size();
    }
    let s = store.clone();
    let d = digest.clone();
    let unpacked = blocking(move || s.unpack(&d, &manifest)).await?;
    Ok(Pulled {
        manifest: digest,
        fetched: fetched.0,
        bytes: fetched.1,
        image: unpacked,
    })
}

/// Fetches the manifest (or index) `reference` names into the store; its descriptor.
async fn fetch_manifest(
    store: &ContentStore,
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    image: &str,
    fetched: &mut (usize, u64),
) -> Result<Descriptor> {
    let (raw, digest) = client
        .pull_manifest_raw(reference, auth, ACCEPTED)
        .await
        .map_err(failed(image, "the manifest"))?;
    // The digest asked for, when the reference has one; else the registry's.
    let want = reference.digest().map(str::to_string).unwrap_or(digest);
    let d: Digest = want.parse().map_err(|e| Error::Protocol {
        what: format!("the manifest of {image}"),
        reason: format!("digest {want:?}: {e}"),
    })?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| ACCEPTED[1].to_string());
    if !store.has(&d) {
        store.put(&d, raw.len() as u64, raw.as_ref())?;
        fetched.0 += 1;
        fetched.1 += raw.len() as u64;
    }
    DescriptorBuilder::default()
        .media_type(MediaType::from(media_type.as_str()))
        .digest(d)
        .size(raw.len() as u64)
        .build()
        .map_err(|e| Error::Protocol {
            what: format!("the manifest of {image}"),
            reason: e.to_string(),
        })
}

/// Hashing, syncing and unpacking block: off the event loop.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Protocol {
            what: "an image's blobs".into(),
            reason: format!("the worker stopped: {e}"),
        })?
}

/// A writer that refuses what goes past `left` bytes.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Bounded<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "more bytes than the descriptor's size",
            )));
        }
        let me = &mut *self;
        let r = std::pin::Pin::new(&mut me.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            me.left -= *n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
