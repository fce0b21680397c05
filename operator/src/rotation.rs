//! Key ring rotation (DESIGN §6). Being written.
