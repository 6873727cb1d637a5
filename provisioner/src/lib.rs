//! plinth-provisioner: see ../shared/DESIGN.md (work in progress).
