/*
 * kaitian.h: the C ABI of Kaitian's host-memory collective engine.
 *
 * Modelled on nccl.h: opaque handles, a result enum with fixed numbers, outputs through
 * pointers, an error string per thread and per communicator, and a config struct that starts
 * with its size and version so it can grow. Every collective is asynchronous: it returns a
 * work handle at once; the call runs on the communicator's engine thread in issue order.
 * Buffers are host memory, borrowed until the work completes.
 *
 * Thread safety: all functions may be called from any thread. Calls on one communicator run
 * in the order they were issued, so issue them from one thread (or order them yourself).
 */
#ifndef KAITIAN_H
#define KAITIAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KAITIAN_MAJOR 0
#define KAITIAN_MINOR 1
#define KAITIAN_PATCH 0
#define KAITIAN_VERSION(X, Y, Z) ((X) * 10000 + (Y) * 100 + (Z))
#define KAITIAN_VERSION_CODE KAITIAN_VERSION(KAITIAN_MAJOR, KAITIAN_MINOR, KAITIAN_PATCH)

typedef struct ktComm *ktComm_t;
typedef struct ktWork *ktWork_t;
typedef struct ktStore *ktStore_t;
typedef struct ktStoreServer *ktStoreServer_t;

typedef enum {
  ktSuccess = 0,
  ktInvalidArgument = 1, /* a bad argument from the caller */
  ktInvalidUsage = 2,    /* a valid argument at the wrong time (destroyed communicator, ...) */
  ktSystemError = 3,     /* the operating system refused (sockets, shared memory, threads) */
  ktRemoteError = 4,     /* a peer failed, left, or its connection broke */
  ktTimeout = 5,         /* a call or a wait passed its deadline */
  ktMismatch = 6,        /* ranks issued different collectives (kind, dtype, count, root, order) */
  ktInProgress = 7,      /* the work has not finished yet */
  ktInternalError = 8,   /* a bug in Kaitian: please report it */
  ktNumResults = 9
} ktResult_t;

typedef enum {
  ktInt8 = 0,
  ktUint8 = 1,
  ktInt32 = 2,
  ktInt64 = 3,
  ktFloat16 = 4,
  ktFloat32 = 5,
  ktFloat64 = 6,
  ktBfloat16 = 7,
  ktNumTypes = 8
} ktDataType_t;

typedef enum { ktSum = 0, ktProd = 1, ktMax = 2, ktMin = 3, ktAvg = 4, ktNumOps = 5 } ktRedOp_t;

typedef enum {
  ktTransportDefault = -1, /* KAITIAN_TRANSPORT, else auto */
  ktTransportAuto = 0,     /* shared memory on one host, TCP between hosts */
  ktTransportTcp = 1,
  ktTransportShm = 2
} ktTransport_t;

/* Communicator settings. Start from KT_CONFIG_INITIALIZER: a NULL string, a timeout <= 0 and
 * transport ktTransportDefault mean "from the environment (KAITIAN_*), else the default". (A
 * config zeroed with memset asks for ktTransportAuto, since that enum value is 0.) */
typedef struct {
  size_t size;          /* sizeof(ktConfig_t) */
  unsigned int version; /* KAITIAN_VERSION_CODE */
  const char *token;    /* job token for peer connections; NULL: KAITIAN_TOKEN(_FILE) */
  const char *storePrefix; /* namespace of this communicator's keys; NULL: "kaitian" */
  const char *hostId;      /* ranks with equal ids share memory; NULL: KAITIAN_HOST_ID, hostname */
  const char *socketAddr;  /* address peers connect to; NULL: KAITIAN_SOCKET_ADDR/IFNAME, ... */
  int transport;           /* a ktTransport_t */
  double timeoutSeconds;   /* per call and for set-up; <= 0: KAITIAN_TIMEOUT, else 300 */
} ktConfig_t;

#define KT_CONFIG_INITIALIZER \
  { sizeof(ktConfig_t), KAITIAN_VERSION_CODE, NULL, NULL, NULL, NULL, ktTransportDefault, 0.0 }

/* ---- Version and errors ---- */
ktResult_t ktGetVersion(int *version);
/* A static description of a result code. */
const char *ktGetErrorString(ktResult_t result);
/* The message of the last failed call made by this thread ("" if none). Valid until the
 * thread's next Kaitian call. */
const char *ktGetLastError(void);

/* ---- Rendezvous store ---- */
/* Starts Kaitian's store server on host:port (port 0 picks a free one, returned in *boundPort).
 * token NULL: KAITIAN_TOKEN(_FILE). */
ktResult_t ktStoreServerStart(ktStoreServer_t *server, const char *host, int port,
                              const char *token, int *boundPort);
ktResult_t ktStoreServerStop(ktStoreServer_t server);

/* Connects to a Kaitian store server at "host:port" or "[v6]:port", or to Redis at
 * "redis://[:password@]host[:port][/db]" (keys under kaitian/$KAITIAN_JOB_ID/; token unused). */
ktResult_t ktStoreConnect(ktStore_t *store, const char *address, const char *token,
                          double timeoutSeconds);

/* A store backed by the caller's functions (for example torch.distributed's store). Each
 * function returns 0 on success, 1 on timeout, and -1 on any other failure; *length receives a
 * value's size. If capacity is too small, get returns 2 with *length set to the size needed
 * and the caller asks again. The functions may be called from any thread. */
typedef struct {
  size_t size; /* sizeof(ktStoreCallbacks_t) */
  void *userData;
  int (*set)(void *userData, const char *key, const void *value, size_t length);
  int (*get)(void *userData, const char *key, void *value, size_t capacity, size_t *length,
             double timeoutSeconds);
  int (*add)(void *userData, const char *key, int64_t delta, int64_t *result);
  int (*wait)(void *userData, const char *const *keys, size_t count, double timeoutSeconds);
} ktStoreCallbacks_t;
ktResult_t ktStoreFromCallbacks(ktStore_t *store, const ktStoreCallbacks_t *callbacks);

ktResult_t ktStoreSet(ktStore_t store, const char *key, const void *value, size_t length);
/* Waits up to timeoutSeconds for the key. Returns ktInvalidArgument with *length set to the
 * size needed when capacity is too small. */
ktResult_t ktStoreGet(ktStore_t store, const char *key, void *value, size_t capacity,
                      size_t *length, double timeoutSeconds);
ktResult_t ktStoreAdd(ktStore_t store, const char *key, int64_t delta, int64_t *result);
/* Removes every key that starts with prefix (an empty prefix is refused); *removed (may be
 * NULL) receives how many. For Kaitian's store and Redis; a callback store gives
 * ktInvalidUsage. A group removes its rendezvous keys with it once every rank has joined. */
ktResult_t ktStoreDeletePrefix(ktStore_t store, const char *prefix, size_t *removed);
ktResult_t ktStoreFree(ktStore_t store);

/* ---- Communicators ---- */
/* Joins a communicator of nranks ranks as `rank`; blocks until all ranks have joined or the
 * timeout passes. The store must stay valid until ktCommInitRank returns. */
ktResult_t ktCommInitRank(ktComm_t *comm, ktStore_t store, int nranks, int rank,
                          const ktConfig_t *config);
/* Finishes issued calls, tells peers this rank leaves, and frees the communicator. */
ktResult_t ktCommDestroy(ktComm_t comm);
/* Fails the communicator on every rank: pending and later calls fail with `reason`. */
ktResult_t ktCommAbort(ktComm_t comm, const char *reason);
ktResult_t ktCommCount(const ktComm_t comm, int *count);
ktResult_t ktCommUserRank(const ktComm_t comm, int *rank);
/* ktSuccess while healthy; otherwise the code of the first fatal error. */
ktResult_t ktCommGetAsyncError(ktComm_t comm, ktResult_t *asyncError);
/* The message of the communicator's first fatal error ("" if none). Valid until destroy. */
const char *ktCommGetLastError(ktComm_t comm);

/* ---- Collectives (out-of-place when the buffers differ, in-place when they coincide) ---- */
ktResult_t ktAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                       ktDataType_t datatype, ktRedOp_t op, ktComm_t comm, ktWork_t *work);
/* recvbuff is used on the root only. */
ktResult_t ktReduce(const void *sendbuff, void *recvbuff, size_t count, ktDataType_t datatype,
                    ktRedOp_t op, int root, ktComm_t comm, ktWork_t *work);
/* sendbuff is read on the root only; every rank's recvbuff receives it. */
ktResult_t ktBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                       ktDataType_t datatype, int root, ktComm_t comm, ktWork_t *work);
/* recvbuff holds nranks * sendcount elements in rank order. */
ktResult_t ktAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                       ktDataType_t datatype, ktComm_t comm, ktWork_t *work);
/* recvcounts[r] elements from rank r, packed in rank order; equal on every rank. */
ktResult_t ktAllGatherV(const void *sendbuff, void *recvbuff, const size_t *recvcounts,
                        ktDataType_t datatype, ktComm_t comm, ktWork_t *work);
/* sendbuff holds nranks * recvcount elements; rank r receives block r of the reduction. */
ktResult_t ktReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                           ktDataType_t datatype, ktRedOp_t op, ktComm_t comm, ktWork_t *work);
/* The root's recvbuff receives nranks * sendcount elements. */
ktResult_t ktGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                    ktDataType_t datatype, int root, ktComm_t comm, ktWork_t *work);
/* The root's sendbuff holds nranks * recvcount elements; rank r receives block r. */
ktResult_t ktScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                     ktDataType_t datatype, int root, ktComm_t comm, ktWork_t *work);
/* Block p (count elements) goes to rank p. */
ktResult_t ktAllToAll(const void *sendbuff, void *recvbuff, size_t count, ktDataType_t datatype,
                      ktComm_t comm, ktWork_t *work);
/* sendcounts[p] elements to rank p, recvcounts[q] from rank q, blocks packed in rank order. */
ktResult_t ktAllToAllV(const void *sendbuff, const size_t *sendcounts, void *recvbuff,
                       const size_t *recvcounts, ktDataType_t datatype, ktComm_t comm,
                       ktWork_t *work);
ktResult_t ktBarrier(ktComm_t comm, ktWork_t *work);
/* Matched in issue order per pair of ranks; the tags must agree. */
ktResult_t ktSend(const void *sendbuff, size_t count, ktDataType_t datatype, int peer, int tag,
                  ktComm_t comm, ktWork_t *work);
ktResult_t ktRecv(void *recvbuff, size_t count, ktDataType_t datatype, int peer, int tag,
                  ktComm_t comm, ktWork_t *work);
/* Receives from whichever rank first sends this rank a message with `tag` (gloo's
 * recvAnysource, MPI_ANY_SOURCE); ktWorkGetSource names that rank once the work completes.
 * Other ranks' messages wait for the receives that match them. */
ktResult_t ktRecvAny(void *recvbuff, size_t count, ktDataType_t datatype, int tag, ktComm_t comm,
                     ktWork_t *work);
/* One send (isSend 1, buff read) or receive (isSend 0, buff written) of ktSendRecvBatch. */
typedef struct {
  int isSend;
  void *buff;
  size_t count;
  ktDataType_t datatype;
  int peer;
  int tag;
} ktP2POp_t;
/* Sends and receives that progress together (as NCCL's grouped send/recv), so a ring exchange
 * cannot deadlock whatever order each rank lists them in. Each matches the peer's send or
 * receive (batched or not) as ktSend/ktRecv would; operations on one peer and direction run in
 * the order given. One work for the whole batch; the ops array may be freed on return. */
ktResult_t ktSendRecvBatch(const ktP2POp_t *ops, int nops, ktComm_t comm, ktWork_t *work);

/* ---- Work handles ---- */
/* Waits up to timeoutSeconds (< 0: no limit). Returns the call's result, or ktInProgress when
 * the wait timed out (the call keeps running). */
ktResult_t ktWorkWait(ktWork_t work, double timeoutSeconds);
/* *done = 1 once the call has ended; returns ktSuccess or the call's error once ended. */
ktResult_t ktWorkTest(ktWork_t work, int *done);
/* Calls callback(userData, result) once when the call ends, on the engine thread (or at once
 * on this thread if it already has). Keep it short; it must not wait on the communicator. */
typedef void (*ktWorkCallback_t)(void *userData, ktResult_t result);
ktResult_t ktWorkSetCallback(ktWork_t work, ktWorkCallback_t callback, void *userData);
/* *source = the rank a completed receive took its message from (ktRecv's peer, or the sender
 * ktRecvAny matched); -1 while the call runs, after it failed, and for calls other than
 * receives. */
ktResult_t ktWorkGetSource(ktWork_t work, int *source);
/* The call's error message, or NULL while running or after success. Valid until ktWorkFree. */
const char *ktWorkGetError(ktWork_t work);
/* Releases the handle; the call itself still runs to completion. */
ktResult_t ktWorkFree(ktWork_t work);

/* ---- Hybrid communicators: device groups with their own libraries ---- */
/* Ranks of one device kind on one host form a group that runs its vendor's library (NCCL,
 * CNCL, HCCL, or torch's ProcessGroup for them); the groups meet through Kaitian's engine in
 * host memory. Kaitian runs the hierarchical algorithm on three threads of its own (reduce in
 * the group, relay between groups, gather in the group) and calls the application's library
 * through the functions below. docs/HYBRID.md describes the algorithm. */
typedef struct ktHybrid *ktHybrid_t;

/* count elements from element offset of the application's buffer `buffer`: a host address when
 * the hybrid has no memory functions, else the application's own id (a device tensor's). */
typedef struct {
  uint64_t buffer;
  size_t offset;
  size_t count;
} ktRegion_t;

/* One instance of a group's library. Every function works in place on a region, blocks until
 * the result is there, and returns 0, or nonzero after writing a NUL-terminated message of at
 * most errorCapacity bytes to error. reduceScatter: the region holds groupSize blocks; block
 * localRank must end reduced over the group (others undefined). allGather: block r of local
 * rank r ends in every rank's block r. Each instance is called from one Kaitian thread at a
 * time. abort (may be NULL) should release ranks blocked in the library; destroy (may be NULL)
 * is called once, from ktHybridDestroy or a failed ktHybridInitRank. */
typedef struct {
  void *userData;
  int (*allReduce)(void *userData, ktRegion_t region, ktDataType_t datatype, ktRedOp_t op,
                   char *error, size_t errorCapacity);
  int (*reduceScatter)(void *userData, ktRegion_t region, ktDataType_t datatype, ktRedOp_t op,
                       char *error, size_t errorCapacity);
  int (*allGather)(void *userData, ktRegion_t region, ktDataType_t datatype, char *error,
                   size_t errorCapacity);
  int (*broadcast)(void *userData, ktRegion_t region, ktDataType_t datatype, int root,
                   char *error, size_t errorCapacity);
  void (*abort)(void *userData, const char *reason);
  void (*destroy)(void *userData);
} ktGroupLibrary_t;

/* The group a rank joins: its index among the groups (ordered by lowest global rank), the
 * global ranks in it (in local rank order), and the store prefix of this instance's rendezvous.
 * instance is 0 for the reduce stage's library and 1 for the gather stage's. */
typedef struct {
  int groupIndex;
  int groupCount;
  int localRank;
  int groupSize;
  const int *globalRanks;
  const char *deviceKind;
  const char *hostId;
  const char *storePrefix;
  int instance;
} ktGroupInfo_t;

typedef struct {
  size_t size; /* sizeof(ktHybridCallbacks_t) */
  void *userData;
  /* Called twice (instance 0, then 1) on every rank of a group of two or more ranks, in the
   * same order on every rank. Fills *library and returns 0; returns 1 to run Kaitian's engine
   * inside the group (host buffers only); else nonzero with a message. */
  int (*joinGroup)(void *userData, const ktGroupInfo_t *info, ktGroupLibrary_t *library,
                   char *error, size_t errorCapacity);
  /* Both NULL: buffers are host addresses. Else hostView sets *view to host memory holding the
   * region (a staging copy for device memory), valid until commit, which must copy the view's
   * contents back into the region. May be called from several Kaitian threads at once for
   * different regions. */
  int (*hostView)(void *userData, ktRegion_t region, ktDataType_t datatype, void **view,
                  char *error, size_t errorCapacity);
  int (*commit)(void *userData, ktRegion_t region, ktDataType_t datatype, void *view,
                char *error, size_t errorCapacity);
} ktHybridCallbacks_t;

/* Exchanges device kinds and host ids through the store, joins the all-ranks communicator,
 * this rank's group (through joinGroup) and its shard column, in one order on every rank.
 * deviceKind names the rank's device kind ("cuda", "mlu", "cpu"); config as ktCommInitRank. */
ktResult_t ktHybridInitRank(ktHybrid_t *hybrid, ktStore_t store, int nranks, int rank,
                            const char *deviceKind, const ktConfig_t *config,
                            const ktHybridCallbacks_t *callbacks);
/* Finishes issued calls, then leaves every communicator and destroys the group libraries. */
ktResult_t ktHybridDestroy(ktHybrid_t hybrid);
/* Fails pending and later calls on every rank. */
ktResult_t ktHybridAbort(ktHybrid_t hybrid, const char *reason);
ktResult_t ktHybridGetAsyncError(ktHybrid_t hybrid, ktResult_t *asyncError);
/* The first failure's message, "" if none. Valid until ktHybridDestroy. */
const char *ktHybridGetLastError(ktHybrid_t hybrid);
/* groupOfRank[r] and localRankOfRank[r] for every global rank r (arrays of nranks). */
ktResult_t ktHybridTopology(ktHybrid_t hybrid, int *groupOfRank, int *localRankOfRank);
/* The communicators the hybrid is built on, owned by it (never destroy them): all ranks, and
 * this rank's shard column (*comm NULL when it has none). */
ktResult_t ktHybridWorld(ktHybrid_t hybrid, ktComm_t *comm);
ktResult_t ktHybridColumn(ktHybrid_t hybrid, ktComm_t *comm);
/* When joinGroup returned 1 (Kaitian's engine inside the group): the engine communicator of the
 * reduce stage's library (instance 0) or the gather stage's (1), owned by the hybrid (never
 * destroy it); *comm NULL otherwise. Issue on it only from that stage's steps (ktHybridSubmit),
 * so its calls keep one order on every rank. */
ktResult_t ktHybridGroupComm(ktHybrid_t hybrid, int instance, ktComm_t *comm);
/* The stages of a hybrid allreduce whose wall time ktHybridStageSeconds reports. */
typedef enum {
  ktHybridStageGroupReduceScatter = 0, /* inside the group, through its library */
  ktHybridStageGroupAllReduce = 1,
  ktHybridStageGroupAllGather = 2,
  ktHybridStageGroupBroadcast = 3,
  ktHybridStageRelay = 4 /* between groups: the column allreduce and its staging */
} ktHybridStage_t;
/* Seconds spent so far in one stage of hybrid allreduces, waiting for peers included. */
ktResult_t ktHybridStageSeconds(ktHybrid_t hybrid, ktHybridStage_t stage, double *seconds);

/* Hierarchical allreduce in place on region, pipelined in chunks of KAITIAN_HYBRID_CHUNK_BYTES.
 * AVG divides once by the world size. Bitwise identical on every rank. */
ktResult_t ktHybridAllReduce(ktRegion_t region, ktDataType_t datatype, ktRedOp_t op,
                             ktHybrid_t hybrid, ktWork_t *work);

/* The application's own steps, run as one call in the hybrid's order: reduce on the reduce
 * stage's thread, relay on the relay stage's, gather on the gather stage's (NULL: nothing at
 * that stage). Each returns 0, or nonzero with a message; a failure fails the hybrid. release
 * (may be NULL) is called once after the last step ran or was skipped. With direct = 1 the call
 * must be only a quick gather step that issues work completing on its own (an engine call on
 * ktHybridWorld): it runs on this thread when no call is inside the stages, else is queued. */
typedef struct {
  void *userData;
  int (*reduce)(void *userData, char *error, size_t errorCapacity);
  int (*relay)(void *userData, char *error, size_t errorCapacity);
  int (*gather)(void *userData, char *error, size_t errorCapacity);
  void (*release)(void *userData);
} ktHybridSteps_t;
ktResult_t ktHybridSubmit(const ktHybridSteps_t *steps, const char *name, int direct,
                          ktHybrid_t hybrid, ktWork_t *work);

/* ---- Load-adaptive planning ---- */
typedef enum {
  ktPlanFixedGlobal = 0, /* split a fixed global batch in proportion to speed (default) */
  ktPlanPaper = 1        /* the paper: the fastest keeps `batch`, others batch * t_min / t_i */
} ktPlanMode_t;

/* Per-rank batch sizes from measured speeds. secondsPerSample[i] > 0 is rank i's compute time
 * per sample (compute only, not time waiting in collectives). maxBatch may be NULL; entries
 * <= 0 mean no memory limit for that rank. In ktPlanFixedGlobal, `batch` is the global batch:
 * the result sums to it exactly, every rank gets at least 1, no rank more
 * than its maxBatch (ktInvalidArgument if the limits cannot hold `batch` or batch < nranks).
 * Each rank gets the floor of its proportional share, and the samples left go one each to the
 * ranks whose predicted steps they lengthen least (ties to the lower rank): the plan with the
 * shortest slowest step among those within a sample of the shares.
 * In ktPlanPaper, `batch` is the fastest rank's batch and rank i gets
 * max(1, round(batch * t_min / t_i)), capped by maxBatch. Writes nranks entries to batches. */
ktResult_t ktPlanBatches(int nranks, const double *secondsPerSample, const int64_t *maxBatch,
                         int64_t batch, ktPlanMode_t mode, int64_t *batches);

/* ktPlanBatches with a per-step time that does not grow with the batch: rank i's step of b
 * samples is predicted to take fixedSeconds[i] + b * secondsPerSample[i] (kernel launches, the
 * optimizer, the framework's own work; each finite and >= 0, or fixedSeconds NULL for none),
 * and the plan equalises those predicted step times. Why: measured per sample at one batch
 * size, the fixed part looks like per-sample work and slow ranks (given small batches) are
 * planned too much. ktPlanFixedGlobal: the shares are clamp((T - fixed_i) / t_i, 1, maxBatch_i)
 * for the common step time T at which they sum to `batch`, rounded as in ktPlanBatches.
 * ktPlanPaper: the rank with the shortest step at `batch` keeps it; rank i gets the batch it
 * finishes in the same time, at least 1. With all fixed times 0 this is ktPlanBatches. */
ktResult_t ktPlanBatchesWithOverhead(int nranks, const double *fixedSeconds,
                                     const double *secondsPerSample, const int64_t *maxBatch,
                                     int64_t batch, ktPlanMode_t mode, int64_t *batches);

/* Online re-balancing: feed per-step compute times, ask for a new plan when due. The
 * rebalancer smooths each rank's seconds per sample (exponential moving average with factor
 * `smoothing` in (0, 1]) and proposes a change only when it would shorten the predicted step
 * (the slowest rank's batch times its seconds per sample) by more than `hysteresis` (a
 * fraction in [0, 1), e.g. 0.05), so plans do not wander with measurement noise. It
 * is a pure function of the observations fed to it, so ranks that feed the same numbers (e.g.
 * after an allgather) agree on every proposal without further communication. */
typedef struct ktRebalancer *ktRebalancer_t;
ktResult_t ktRebalancerCreate(ktRebalancer_t *rebalancer, int nranks, int64_t batch,
                              ktPlanMode_t mode, const int64_t *maxBatch, double smoothing,
                              double hysteresis);
/* Makes `batches` (nranks entries) the current plan, as if proposed: the plan training starts
 * with (measured beforehand, or from a checkpoint), so later proposals are weighed against it.
 * ktInvalidArgument unless every batch is in [1, maxBatch] and, in ktPlanFixedGlobal, they sum
 * to the global batch. */
ktResult_t ktRebalancerAdopt(ktRebalancer_t rebalancer, const int64_t *batches);
/* Rank `rank` spent computeSeconds on `samples` samples in its last step(s). */
ktResult_t ktRebalancerObserve(ktRebalancer_t rebalancer, int rank, double computeSeconds,
                               int64_t samples);
/* ktRebalancerObserve for a window of `steps` whole steps (0: unknown). With the steps known,
 * the rank's fixed part (ktRebalancerSetStepCosts) is taken out of the observed time, so a rank
 * given few samples is not mistaken for a slow one. */
ktResult_t ktRebalancerObserveSteps(ktRebalancer_t rebalancer, int rank, double computeSeconds,
                                    int64_t samples, int64_t steps);
/* Each rank's measured step cost, fixedSeconds[i] + b * secondsPerSample[i] for b samples (as
 * for ktPlanBatchesWithOverhead; nranks entries each). Observations of whole steps then scale
 * each rank's cost, its fixed part included, and plans equalise the scaled step times. */
ktResult_t ktRebalancerSetStepCosts(ktRebalancer_t rebalancer, const double *fixedSeconds,
                                    const double *secondsPerSample);
/* Writes the current plan to batches (nranks entries) and sets *changed = 1 when it differs
 * from the previous proposal (0 otherwise). The first call returns the plan from the first
 * observations (or an even split when no rank has been observed). */
ktResult_t ktRebalancerPropose(ktRebalancer_t rebalancer, int64_t *batches, int *changed);
ktResult_t ktRebalancerFree(ktRebalancer_t rebalancer);

#ifdef __cplusplus
}
#endif
#endif /* KAITIAN_H */
