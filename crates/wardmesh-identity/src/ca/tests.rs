//! CA tests (see the identity tests helper).
