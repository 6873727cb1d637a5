//! plinth-bootimg: see ../shared/DESIGN.md (work in progress).
