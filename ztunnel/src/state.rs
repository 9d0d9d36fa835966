//! The agent's view of the mesh: the shared store in `ambit_proto::mesh`.

pub use ambit_proto::mesh::*;
