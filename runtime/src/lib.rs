//! plinth runtime
