//! hrl core
