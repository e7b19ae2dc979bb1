//! The DMA API drivers use (being written).
#![no_std]
