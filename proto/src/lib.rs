//! The wire types of chatmesh: the seed's protocol, package `bite_im`, field numbers unchanged.

#[allow(clippy::all)]
pub mod bite_im {
    tonic::include_proto!("bite_im");
}

pub use bite_im::*;

/// Encoded `FileDescriptorSet` of every .proto file, for reflection (JSON transcoding).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The descriptor pool built from [`DESCRIPTOR_SET`], decoded once.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(DESCRIPTOR_SET).expect("descriptor set built by build.rs is valid")
    })
}

pub mod codec;
pub mod envelope;
pub use envelope::{Envelope, Reply};
