//! The three collectives a sharded step needs, and two transports: threads
//! of one process (always built; tests and single-host use) and MPI
//! (feature `mpi`).

use crate::error::{Error, Result};
use std::sync::{Arc, Barrier, Mutex};

/// The collectives [`super::ShardedOptimizer`] calls, every rank calling the
/// same ones in the same order. Each returns the data of every rank in rank
/// order, never reduced: the sums are formed by the caller, in rank order,
/// so that the result does not depend on the transport's reduction order.
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Every rank's `send` (the same length on every rank), concatenated in
    /// rank order.
    fn all_gather_f64(&self, send: &[f64]) -> Result<Vec<f64>>;
    /// Every rank's `send` (`counts[r]` elements from rank `r`),
    /// concatenated in rank order.
    fn all_gather_f32(&self, send: &[f32], counts: &[usize]) -> Result<Vec<f32>>;
    /// `send` holds `send_counts[s]` elements for each rank `s`, in rank
    /// order; returns what each rank `s` sent this one (`recv_counts[s]`
    /// elements), in rank order.
    fn all_to_all_f32(
        &self,
        send: &[f32],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<f32>>;
}

/// Ranks as threads of one process, exchanging through shared memory: the
/// tests' transport, and one that lets a single host shard state over
/// threads with no MPI installed.
///
/// ```
/// use wgpu_optim::sharded::{Collective, ThreadCollective};
/// let ranks = ThreadCollective::group(3);
/// let sums: Vec<f64> = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .iter()
///         .map(|c| s.spawn(move || c.all_gather_f64(&[c.rank() as f64]).unwrap().iter().sum()))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, vec![3.0; 3]);
/// ```
#[derive(Clone, Debug)]
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    n: usize,
    barrier: Barrier,
    f32_slots: Mutex<Vec<(Vec<f32>, Vec<usize>)>>,
    f64_slots: Mutex<Vec<Vec<f64>>>,
}

impl ThreadCollective {
    /// `n` ranks (at least 1), one to move into each thread. A rank that
    /// stops calling (a panicked thread) leaves the others waiting: join
    /// them under `std::thread::scope`, which propagates the panic.
    pub fn group(n: usize) -> Vec<ThreadCollective> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            n,
            barrier: Barrier::new(n),
            f32_slots: Mutex::new(vec![(Vec::new(), Vec::new()); n]),
            f64_slots: Mutex::new(vec![Vec::new(); n]),
        });
        (0..n)
            .map(|rank| ThreadCollective {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn poisoned() -> Error {
        Error::Collective("a rank's thread panicked holding the exchange".into())
    }

    /// Writes this rank's slot, waits for every rank, reads, and waits
    /// again so no rank overwrites a slot still being read.
    fn exchange_f32<T>(
        &self,
        send: &[f32],
        counts: &[usize],
        read: impl FnOnce(&[(Vec<f32>, Vec<usize>)]) -> T,
    ) -> Result<T> {
        {
            let mut slots = self.shared.f32_slots.lock().map_err(|_| Self::poisoned())?;
            slots[self.rank] = (send.to_vec(), counts.to_vec());
        }
        self.shared.barrier.wait();
        let out = {
            let slots = self.shared.f32_slots.lock().map_err(|_| Self::poisoned())?;
            read(&slots)
        };
        self.shared.barrier.wait();
        Ok(out)
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.n
    }

    fn all_gather_f64(&self, send: &[f64]) -> Result<Vec<f64>> {
        {
            let mut slots = self.shared.f64_slots.lock().map_err(|_| Self::poisoned())?;
            slots[self.rank] = send.to_vec();
        }
        self.shared.barrier.wait();
        let out = {
            let slots = self.shared.f64_slots.lock().map_err(|_| Self::poisoned())?;
            slots.concat()
        };
        self.shared.barrier.wait();
        Ok(out)
    }

    fn all_gather_f32(&self, send: &[f32], _counts: &[usize]) -> Result<Vec<f32>> {
        self.exchange_f32(send, &[], |slots| {
            slots.iter().flat_map(|(v, _)| v.iter().copied()).collect()
        })
    }

    fn all_to_all_f32(
        &self,
        send: &[f32],
        send_counts: &[usize],
        _recv_counts: &[usize],
    ) -> Result<Vec<f32>> {
        let me = self.rank;
        self.exchange_f32(send, send_counts, |slots| {
            let mut out = Vec::new();
            for (buf, counts) in slots {
                let at: usize = counts[..me].iter().sum();
                out.extend_from_slice(&buf[at..at + counts[me]]);
            }
            out
        })
    }
}

/// The ranks of an MPI communicator (rsmpi), feature `mpi`.
///
/// Errors: MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) is kept, so
/// a rank that dies or a failed call aborts the whole job (`mpirun` ends
/// every rank with a non-zero status) rather than leaving the others
/// waiting. Counts above `i32::MAX` elements a rank, which MPI's `int`
/// counts cannot carry, are refused with [`Error::SizeOverflow`] on every
/// rank alike (the counts are the same on every rank).
#[cfg(feature = "mpi")]
pub struct MpiCollective {
    comm: mpi::topology::SimpleCommunicator,
}

#[cfg(feature = "mpi")]
impl MpiCollective {
    /// Over this communicator (`mpi::initialize()?.world()`, or a split of it).
    pub fn new(comm: mpi::topology::SimpleCommunicator) -> Self {
        MpiCollective { comm }
    }

    /// The communicator.
    pub fn comm(&self) -> &mpi::topology::SimpleCommunicator {
        &self.comm
    }
}

#[cfg(feature = "mpi")]
fn mpi_counts(counts: &[usize]) -> Result<(Vec<i32>, Vec<i32>)> {
    let overflow = |n: usize| Error::SizeOverflow {
        what: "an MPI count or displacement",
        ty: "i32",
        detail: format!("{n} elements"),
    };
    let mut c = Vec::with_capacity(counts.len());
    let mut d = Vec::with_capacity(counts.len());
    let mut at = 0usize;
    for &n in counts {
        d.push(i32::try_from(at).map_err(|_| overflow(at))?);
        c.push(i32::try_from(n).map_err(|_| overflow(n))?);
        at += n;
    }
    Ok((c, d))
}

#[cfg(feature = "mpi")]
impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        use mpi::traits::Communicator;
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        use mpi::traits::Communicator;
        self.comm.size() as usize
    }

    fn all_gather_f64(&self, send: &[f64]) -> Result<Vec<f64>> {
        use mpi::traits::CommunicatorCollectives;
        let mut out = vec![0.0f64; send.len() * self.size()];
        self.comm.all_gather_into(send, &mut out[..]);
        Ok(out)
    }

    fn all_gather_f32(&self, send: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        use mpi::datatype::PartitionMut;
        use mpi::traits::CommunicatorCollectives;
        let (c, d) = mpi_counts(counts)?;
        let mut out = vec![0.0f32; counts.iter().sum()];
        let mut part = PartitionMut::new(&mut out[..], c, d);
        self.comm.all_gather_varcount_into(send, &mut part);
        Ok(out)
    }

    fn all_to_all_f32(
        &self,
        send: &[f32],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<f32>> {
        use mpi::datatype::{Partition, PartitionMut};
        use mpi::traits::CommunicatorCollectives;
        let (sc, sd) = mpi_counts(send_counts)?;
        let (rc, rd) = mpi_counts(recv_counts)?;
        let mut out = vec![0.0f32; recv_counts.iter().sum()];
        let part = Partition::new(send, sc, sd);
        let mut recv = PartitionMut::new(&mut out[..], rc, rd);
        self.comm.all_to_all_varcount_into(&part, &mut recv);
        Ok(out)
    }
}
