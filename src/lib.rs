//! linrec
