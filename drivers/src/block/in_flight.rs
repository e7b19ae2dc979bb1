//! Requests in flight: keeping a device's queue busy, and what to do when the DMA layer has no
//! room for one more.
//!
//! A disk that is handed one request and waited for idles between requests while the CPU maps
//! the next buffer, and the device never overlaps two transfers. Both virtio-blk and NVMe take
//! many requests at once (a virtqueue of descriptors, a submission ring), so a batch is run as
//! a window of up to `depth` requests: submit until the window is full, then wait for any one
//! to complete and submit the next in its place. Linux's block layer does the same with its
//! tag set (`nr_requests`, the "queue depth").
//!
//! A submission can be refused because of what is in flight: a bounce pool or an IOVA space
//! holds the buffers of the requests still running, and has no room for one more. Linux's
//! drivers answer `BLK_STS_RESOURCE` and the block layer retries once a request completes; so
//! does [`run_window`]. A refusal with nothing in flight cannot be cured by waiting: it is the
//! batch's error.
//!
//! ```text
//!   depth 3, six requests, request 4 refused while three run:
//!
//!   submit 0 1 2 │ complete 1 │ submit 3 │ refused 4 │ complete 0 │ submit 4 (retried) │ ...
//! ```
//!
//! The first error ends the batch: nothing more is submitted, what is in flight is waited for
//! (the device still owns those buffers), and that first error is returned. A completion that
//! fails the device itself (a timeout, a completion of something never submitted) is fatal: the
//! driver has stopped the device and ended every mapping, and the batch ends at once.

/// A device queue that takes requests of one batch, numbered from 0, and completes them in any
/// order.
pub trait RequestQueue {
    /// Why a request failed or the device did.
    type Error;

    /// Submits request `index` of the batch. An error means it was not submitted: nothing of it
    /// reached the device.
    fn submit(&mut self, index: usize) -> Result<(), Self::Error>;

    /// Waits for the next request to complete and returns its own outcome. An outer error is
    /// fatal: the device was stopped, and no request of the batch is in flight any more.
    fn complete_next(&mut self) -> Result<Result<(), Self::Error>, Self::Error>;
}

/// Runs `requests` requests on `queue`, at most `depth` (at least 1) in flight at once,
/// submitted in index order (they complete in any order: requests of one batch that overlap
/// on the disk have no defined outcome); a refused submission is retried after a completion
/// while others are in flight. Returns the most requests that were in flight at once, or the
/// first error, once nothing is in flight.
pub fn run_window<Q: RequestQueue>(queue: &mut Q, requests: usize, depth: usize) -> Result<usize, Q::Error> {
    let depth = depth.max(1);
    let (mut next, mut in_flight, mut deepest) = (0, 0, 0);
    let mut first_error = None;
    loop {
        while first_error.is_none() && next < requests && in_flight < depth {
            match queue.submit(next) {
                Ok(()) => {
                    next += 1;
                    in_flight += 1;
                    deepest = deepest.max(in_flight);
                }
                // Perhaps no room while the others run: retry once one of them completes.
                Err(_) if in_flight > 0 => break,
                Err(error) => first_error = Some(error),
            }
        }
        if in_flight == 0 {
            return first_error.map_or(Ok(deepest), Err);
        }
        let outcome = queue.complete_next()?;
        in_flight -= 1;
        if let Err(error) = outcome {
            first_error.get_or_insert(error);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::VecDeque;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// A device whose requests each need `sizes[index]` units of a pool of `room` units, kept
    /// until completion; it completes requests in the order `pick` chooses among those in
    /// flight. Requests listed in `failing` complete with an error, those in `refused` are never
    /// accepted, and the device dies at completion number `dies_at`.
    struct Device {
        sizes: Vec<usize>,
        room: usize,
        in_flight: VecDeque<usize>,
        submitted: Vec<usize>,
        completed: Vec<usize>,
        deepest: usize,
        failing: Vec<usize>,
        refused: Vec<usize>,
        dies_at: Option<usize>,
        pick: fn(usize) -> usize,
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Error {
        NoRoom(usize),
        Refused(usize),
        Failed(usize),
        Died,
    }

    impl Device {
        fn new(sizes: Vec<usize>, room: usize) -> Self {
            Self {
                sizes,
                room,
                in_flight: VecDeque::new(),
                submitted: Vec::new(),
                completed: Vec::new(),
                deepest: 0,
                failing: Vec::new(),
                refused: Vec::new(),
                dies_at: None,
                pick: |_| 0,
            }
        }

        fn used(&self) -> usize {
            self.in_flight.iter().map(|&index| self.sizes[index]).sum()
        }
    }

    impl RequestQueue for Device {
        type Error = Error;

        fn submit(&mut self, index: usize) -> Result<(), Error> {
            if self.refused.contains(&index) {
                return Err(Error::Refused(index));
            }
            if self.used() + self.sizes[index] > self.room {
                return Err(Error::NoRoom(index));
            }
            self.in_flight.push_back(index);
            self.submitted.push(index);
            self.deepest = self.deepest.max(self.in_flight.len());
            Ok(())
        }

        fn complete_next(&mut self) -> Result<Result<(), Error>, Error> {
            if self.dies_at == Some(self.completed.len()) {
                self.in_flight.clear();
                return Err(Error::Died);
            }
            let position = (self.pick)(self.completed.len()) % self.in_flight.len();
            let index = self.in_flight.remove(position).expect("a request in flight");
            self.completed.push(index);
            Ok(match self.failing.contains(&index) {
                true => Err(Error::Failed(index)),
                false => Ok(()),
            })
        }
    }

    #[test]
    fn every_request_runs_once_in_order_of_submission_with_the_window_full() {
        let mut device = Device::new(vec![1; 20], usize::MAX);
        device.pick = |completion| completion * 7 + 3;
        assert_eq!(run_window(&mut device, 20, 8), Ok(8));
        assert_eq!(device.submitted, (0..20).collect::<Vec<_>>());
        let mut completed = device.completed.clone();
        completed.sort_unstable();
        assert_eq!(completed, device.submitted);
        assert_eq!(device.deepest, 8);
    }

    #[test]
    fn a_depth_of_zero_still_runs_one_at_a_time() {
        let mut device = Device::new(vec![1; 5], usize::MAX);
        assert_eq!(run_window(&mut device, 5, 0), Ok(1));
        assert_eq!((device.completed.len(), device.deepest), (5, 1));
    }

    #[test]
    fn a_request_without_room_waits_for_completions_and_then_runs() {
        // Room for two of these at a time, whatever the depth.
        let mut device = Device::new(vec![3, 3, 3, 4, 2, 5], 6);
        device.pick = |completion| completion;
        let deepest = run_window(&mut device, 6, 8).expect("every request runs");
        assert_eq!(device.submitted, (0..6).collect::<Vec<_>>());
        assert_eq!(deepest, device.deepest);
        assert!(deepest <= 2);
        assert!(device.in_flight.is_empty());
    }

    #[test]
    fn a_request_too_large_even_alone_is_the_batch_error_after_the_others_finish() {
        let mut device = Device::new(vec![2, 2, 9, 2], 6);
        assert_eq!(run_window(&mut device, 4, 8), Err(Error::NoRoom(2)));
        // Nothing after it is submitted; nothing is left in flight.
        assert_eq!(device.submitted, vec![0, 1]);
        assert_eq!(device.completed.len(), 2);
    }

    #[test]
    fn a_refusal_with_others_in_flight_is_retried_once_they_complete() {
        let mut device = Device::new(vec![1; 6], usize::MAX);
        device.refused = vec![3];
        assert_eq!(run_window(&mut device, 6, 4), Err(Error::Refused(3)));
        assert_eq!(device.submitted, vec![0, 1, 2]);
        assert!(device.in_flight.is_empty());
    }

    #[test]
    fn a_failed_request_stops_submission_and_the_first_error_is_returned() {
        let mut device = Device::new(vec![1; 12], usize::MAX);
        device.failing = vec![2, 1];
        device.pick = |_| 0;
        assert_eq!(run_window(&mut device, 12, 4), Err(Error::Failed(1)));
        // Requests 0-3 were in flight; 1 completed second and failed; 4 was submitted in 0's
        // place before that, nothing after.
        assert_eq!(device.submitted, vec![0, 1, 2, 3, 4]);
        assert_eq!(device.completed.len(), 5);
    }

    #[test]
    fn a_dead_device_ends_the_batch_at_once() {
        let mut device = Device::new(vec![1; 10], usize::MAX);
        device.dies_at = Some(3);
        assert_eq!(run_window(&mut device, 10, 4), Err(Error::Died));
        assert_eq!(device.completed.len(), 3);
    }

    #[test]
    fn an_empty_batch_does_nothing() {
        let mut device = Device::new(Vec::new(), 0);
        assert_eq!(run_window(&mut device, 0, 8), Ok(0));
        assert!(device.submitted.is_empty());
    }
}
