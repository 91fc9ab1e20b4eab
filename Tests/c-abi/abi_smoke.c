/*
 * abi_smoke.c: proves that include/kaitian.h matches libKaitianC.so.
 *
 * Usage: abi_smoke NRANKS. Forks NRANKS rank processes first (no Kaitian threads exist yet, so
 * fork is safe), then starts the store server in the parent and hands its port to the ranks
 * through pipes. Each rank connects, joins a communicator, checks allreduce, broadcast,
 * allgather and barrier results and the error paths, then joins a hybrid communicator (two
 * device kinds, the engine inside each group) and checks its allreduce and the application's
 * own steps, and exits non-zero on any wrong value.
 */
#define _POSIX_C_SOURCE 200809L
#include <kaitian.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *kToken = "abi-smoke-test-token";
static int gRank = -1;

#define CHECK(cond, ...)                                             \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "rank %d: %s:%d: ", gRank, __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                  \
      fprintf(stderr, "\n");                                         \
      exit(1);                                                       \
    }                                                                \
  } while (0)

#define KT_OK(call)                                                                   \
  do {                                                                                \
    ktResult_t result_ = (call);                                                      \
    CHECK(result_ == ktSuccess, "%s -> %d (%s): %s", #call, (int)result_,             \
          ktGetErrorString(result_), ktGetLastError());                               \
  } while (0)

/* Waits for a work handle, checks it succeeded, and frees it. */
static void finish(ktWork_t work, const char *what) {
  ktResult_t result = ktWorkWait(work, 30.0);
  CHECK(result == ktSuccess, "%s -> %d: %s", what, (int)result, ktGetLastError());
  CHECK(ktWorkGetError(work) == NULL, "%s: ktWorkGetError is not NULL after success", what);
  int done = 0;
  KT_OK(ktWorkTest(work, &done));
  CHECK(done == 1, "%s: ktWorkTest says not done after a successful wait", what);
  KT_OK(ktWorkFree(work));
}

static void checkErrorPaths(ktComm_t comm) {
  float value = 1.0f;
  ktWork_t work = (ktWork_t)0x1;

  CHECK(ktAllReduce(&value, &value, 1, ktFloat32, ktSum, NULL, &work) == ktInvalidArgument,
        "NULL comm is not ktInvalidArgument");
  CHECK(work == NULL, "*work is not NULL after a failed call");
  CHECK(strstr(ktGetLastError(), "comm") != NULL, "last error does not name comm: '%s'",
        ktGetLastError());

  CHECK(ktAllReduce(&value, &value, 1, (ktDataType_t)99, ktSum, comm, &work) ==
            ktInvalidArgument,
        "datatype 99 is not ktInvalidArgument");
  CHECK(strstr(ktGetLastError(), "99") != NULL, "last error does not name 99: '%s'",
        ktGetLastError());
  CHECK(ktAllReduce(&value, &value, 1, ktFloat32, (ktRedOp_t)7, comm, &work) ==
            ktInvalidArgument,
        "op 7 is not ktInvalidArgument");
  CHECK(ktAllReduce(NULL, &value, 1, ktFloat32, ktSum, comm, &work) == ktInvalidArgument,
        "NULL sendbuff with count 1 is not ktInvalidArgument");
  CHECK(ktAllReduce(&value, &value, 1, ktFloat32, ktSum, comm, NULL) == ktInvalidArgument,
        "NULL work is not ktInvalidArgument");
  CHECK(ktAllReduce(&value, &value, (size_t)-1, ktFloat32, ktSum, comm, &work) ==
            ktInvalidArgument,
        "count SIZE_MAX is not ktInvalidArgument");
  CHECK(ktCommCount(comm, NULL) == ktInvalidArgument, "NULL count is not ktInvalidArgument");
  CHECK(ktWorkWait(NULL, 1.0) == ktInvalidArgument, "NULL work is not ktInvalidArgument");
  CHECK(ktWorkGetError(NULL) == NULL, "ktWorkGetError(NULL) is not NULL");
  CHECK(ktCommGetLastError(NULL) != NULL, "ktCommGetLastError(NULL) is NULL");
  CHECK(ktCommGetLastError(comm)[0] == '\0', "a healthy communicator has an error message");

  for (int code = 0; code < ktNumResults; code++) {
    const char *text = ktGetErrorString((ktResult_t)code);
    CHECK(text != NULL && text[0] != '\0', "ktGetErrorString(%d) is empty", code);
  }
  CHECK(ktGetErrorString((ktResult_t)1000) != NULL, "ktGetErrorString(1000) is NULL");
}

/* joinGroup: use Kaitian's engine inside the group (host buffers); records what was asked. */
static int joinWithEngine(void *userData, const ktGroupInfo_t *info, ktGroupLibrary_t *library,
                          char *error, size_t errorCapacity) {
  (void)library;
  int *joins = userData;
  if (info->globalRanks[info->localRank] != gRank) {
    snprintf(error, errorCapacity, "local rank %d of group %d is rank %d, not %d", info->localRank,
             info->groupIndex, info->globalRanks[info->localRank], gRank);
    return -1;
  }
  joins[info->instance]++;
  return 1;
}

/* A step of the application's own: counts itself in the order the stages run it. */
typedef struct {
  int order[3];
  int next;
} StepLog;

static int logStep(StepLog *log, int stage, char *error, size_t errorCapacity) {
  if (log->next > 2) {
    snprintf(error, errorCapacity, "stage %d ran after all three", stage);
    return -1;
  }
  log->order[log->next++] = stage;
  return 0;
}
static int reduceStep(void *log, char *error, size_t cap) { return logStep(log, 0, error, cap); }
static int relayStep(void *log, char *error, size_t cap) { return logStep(log, 1, error, cap); }
static int gatherStep(void *log, char *error, size_t cap) { return logStep(log, 2, error, cap); }
static void releaseSteps(void *log) { ((StepLog *)log)->next += 10; }

/* Ranks alternate between two device kinds, so with 2 ranks or more there are two groups. */
static void checkHybrid(ktStore_t store, int rank, int nranks, const ktConfig_t *config) {
  int joins[2] = {0, 0};
  ktHybridCallbacks_t callbacks = {sizeof(ktHybridCallbacks_t), joins, joinWithEngine, NULL, NULL};
  ktConfig_t hybridConfig = *config;
  hybridConfig.storePrefix = "abi-hybrid";
  ktHybrid_t hybrid = NULL;
  KT_OK(ktHybridInitRank(&hybrid, store, nranks, rank, rank % 2 ? "mlu" : "cuda", &hybridConfig,
                         &callbacks));
  int groupSize = rank % 2 ? nranks / 2 : (nranks + 1) / 2;
  CHECK(joins[0] == (groupSize > 1) && joins[1] == (groupSize > 1),
        "joinGroup calls %d %d for a group of %d", joins[0], joins[1], groupSize);
  int groupOf[64], localOf[64];
  KT_OK(ktHybridTopology(hybrid, groupOf, localOf));
  CHECK(groupOf[rank] == rank % 2 && localOf[rank] == rank / 2, "rank %d: group %d local %d",
        rank, groupOf[rank], localOf[rank]);

  enum { kCount = 1001 };
  int32_t values[kCount];
  for (int i = 0; i < kCount; i++) values[i] = rank + i;
  ktRegion_t region = {(uint64_t)(uintptr_t)values, 0, kCount};
  ktWork_t work = NULL;
  KT_OK(ktHybridAllReduce(region, ktInt32, ktSum, hybrid, &work));
  StepLog log = {{-1, -1, -1}, 0};
  ktHybridSteps_t steps = {&log, reduceStep, relayStep, gatherStep, releaseSteps};
  ktWork_t stepsWork = NULL;
  KT_OK(ktHybridSubmit(&steps, "abi steps", 0, hybrid, &stepsWork));
  finish(work, "hybrid allreduce");
  finish(stepsWork, "hybrid steps");
  for (int i = 0; i < kCount; i++) {
    int32_t expected = nranks * (nranks - 1) / 2 + nranks * i;
    CHECK(values[i] == expected, "hybrid allreduce[%d] = %d, expected %d", i, values[i], expected);
  }
  CHECK(log.order[0] == 0 && log.order[1] == 1 && log.order[2] == 2,
        "steps ran in stage order %d %d %d", log.order[0], log.order[1], log.order[2]);

  ktComm_t world = NULL;
  KT_OK(ktHybridWorld(hybrid, &world));
  int worldSize = 0;
  KT_OK(ktCommCount(world, &worldSize));
  CHECK(worldSize == nranks, "the hybrid's world has %d ranks, not %d", worldSize, nranks);
  for (int stage = ktHybridStageGroupReduceScatter; stage <= ktHybridStageRelay; stage++) {
    double seconds = -1;
    KT_OK(ktHybridStageSeconds(hybrid, (ktHybridStage_t)stage, &seconds));
    CHECK(seconds >= 0, "stage %d seconds %f", stage, seconds);
  }
  double seconds = 0;
  CHECK(ktHybridStageSeconds(hybrid, (ktHybridStage_t)5, &seconds) == ktInvalidArgument,
        "stage 5 is not ktInvalidArgument");
  for (int instance = 0; instance < 2; instance++) {
    ktComm_t group = (ktComm_t)0x1;
    KT_OK(ktHybridGroupComm(hybrid, instance, &group));
    int size = 0;
    if (groupSize > 1) KT_OK(ktCommCount(group, &size));
    CHECK(groupSize > 1 ? size == groupSize : group == NULL,
          "the engine's group communicator %d: %p of %d ranks, for a group of %d", instance,
          (void *)group, size, groupSize);
  }
  CHECK(ktHybridAllReduce(region, ktInt32, (ktRedOp_t)9, hybrid, &work) == ktInvalidArgument,
        "op 9 is not ktInvalidArgument");
  ktResult_t asyncError = ktInternalError;
  KT_OK(ktHybridGetAsyncError(hybrid, &asyncError));
  CHECK(asyncError == ktSuccess, "hybrid async error: %s", ktHybridGetLastError(hybrid));
  KT_OK(ktHybridDestroy(hybrid));
  CHECK(log.next == 13, "the steps' release ran %d times", (log.next - 3) / 10);
}

static int runRank(int rank, int nranks, int portPipe) {
  gRank = rank;
  alarm(60); /* a hang is a failure, not a stuck CI job */
  int port = 0;
  CHECK(read(portPipe, &port, sizeof port) == (ssize_t)sizeof port, "no port from the parent");
  close(portPipe);

  char address[64];
  snprintf(address, sizeof address, "127.0.0.1:%d", port);
  ktStore_t store = NULL;
  KT_OK(ktStoreConnect(&store, address, kToken, 20.0));

  ktConfig_t config = KT_CONFIG_INITIALIZER;
  config.token = kToken;
  config.timeoutSeconds = 20.0;
  ktConfig_t tooSmall = config;
  tooSmall.size = 8;
  ktComm_t comm = (ktComm_t)0x1;
  CHECK(ktCommInitRank(&comm, store, nranks, rank, &tooSmall) == ktInvalidArgument,
        "config.size 8 is not ktInvalidArgument");
  CHECK(comm == NULL, "*comm is not NULL after a failed init");
  KT_OK(ktCommInitRank(&comm, store, nranks, rank, &config));
  checkHybrid(store, rank, nranks, &config);
  KT_OK(ktStoreFree(store)); /* communicators need the store only to join */

  int count = 0, me = -1;
  KT_OK(ktCommCount(comm, &count));
  KT_OK(ktCommUserRank(comm, &me));
  CHECK(count == nranks && me == rank, "count %d rank %d, expected %d %d", count, me, nranks,
        rank);

  /* allreduce, float32 sum, large enough for the bandwidth-optimal path too. */
  enum { kElements = 100000 };
  float *send = malloc(kElements * sizeof *send);
  float *recv = malloc(kElements * sizeof *recv);
  for (int i = 0; i < kElements; i++) send[i] = (float)(rank + 1) + (float)(i % 100);
  ktWork_t work = NULL;
  KT_OK(ktAllReduce(send, recv, kElements, ktFloat32, ktSum, comm, &work));
  finish(work, "allreduce");
  for (int i = 0; i < kElements; i++) {
    float expected = (float)(nranks * (nranks + 1) / 2) + (float)nranks * (float)(i % 100);
    CHECK(fabsf(recv[i] - expected) < 1e-3f, "allreduce[%d] = %f, expected %f", i, recv[i],
          expected);
  }

  /* broadcast from the last rank, int32; sendbuff is unused (NULL) on the other ranks. */
  int32_t broadcast[257];
  int32_t *source = NULL;
  int32_t rootData[257];
  int root = nranks - 1;
  for (int i = 0; i < 257; i++) rootData[i] = 7 * i - 1000;
  if (rank == root) source = rootData;
  memset(broadcast, 0, sizeof broadcast);
  KT_OK(ktBroadcast(source, broadcast, 257, ktInt32, root, comm, &work));
  finish(work, "broadcast");
  for (int i = 0; i < 257; i++) {
    CHECK(broadcast[i] == 7 * i - 1000, "broadcast[%d] = %d", i, broadcast[i]);
  }

  /* allgather, int64, 3 elements per rank. */
  int64_t mine[3] = {rank * 10, rank * 10 + 1, rank * 10 + 2};
  int64_t *gathered = calloc((size_t)nranks * 3, sizeof *gathered);
  KT_OK(ktAllGather(mine, gathered, 3, ktInt64, comm, &work));
  finish(work, "allgather");
  for (int r = 0; r < nranks; r++) {
    for (int j = 0; j < 3; j++) {
      CHECK(gathered[r * 3 + j] == r * 10 + j, "allgather[%d] = %lld", r * 3 + j,
            (long long)gathered[r * 3 + j]);
    }
  }

  /* A NULL buffer is allowed when it holds no elements. */
  KT_OK(ktAllReduce(NULL, NULL, 0, ktFloat64, ktMax, comm, &work));
  finish(work, "empty allreduce");

  KT_OK(ktBarrier(comm, &work));
  finish(work, "barrier");

  checkErrorPaths(comm);

  ktResult_t asyncError = ktInternalError;
  KT_OK(ktCommGetAsyncError(comm, &asyncError));
  CHECK(asyncError == ktSuccess, "async error %d: %s", (int)asyncError,
        ktCommGetLastError(comm));
  KT_OK(ktCommDestroy(comm));
  free(send);
  free(recv);
  free(gathered);
  return 0;
}

int main(int argc, char **argv) {
  int nranks = argc > 1 ? atoi(argv[1]) : 2;
  if (nranks < 1 || nranks > 64) {
    fprintf(stderr, "usage: %s NRANKS (1 to 64)\n", argv[0]);
    return 2;
  }
  int version = 0;
  KT_OK(ktGetVersion(&version));
  CHECK(version == KAITIAN_VERSION_CODE, "library version %d, header %d", version,
        KAITIAN_VERSION_CODE);
  CHECK(ktGetLastError()[0] == '\0', "a fresh thread has a last error");

  int pipes[64][2];
  pid_t children[64];
  for (int rank = 0; rank < nranks; rank++) {
    CHECK(pipe(pipes[rank]) == 0, "pipe failed");
    children[rank] = fork();
    CHECK(children[rank] >= 0, "fork failed");
    if (children[rank] == 0) {
      close(pipes[rank][1]);
      exit(runRank(rank, nranks, pipes[rank][0]));
    }
    close(pipes[rank][0]);
  }

  ktStoreServer_t server = NULL;
  int port = 0;
  KT_OK(ktStoreServerStart(&server, "127.0.0.1", 0, kToken, &port));
  for (int rank = 0; rank < nranks; rank++) {
    CHECK(write(pipes[rank][1], &port, sizeof port) == (ssize_t)sizeof port, "write failed");
    close(pipes[rank][1]);
  }

  int failures = 0;
  for (int rank = 0; rank < nranks; rank++) {
    int status = 0;
    waitpid(children[rank], &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "rank %d failed (status %#x)\n", rank, status);
      failures++;
    }
  }
  KT_OK(ktStoreServerStop(server));
  CHECK(ktStoreServerStop(NULL) == ktInvalidArgument, "NULL server is not ktInvalidArgument");
  if (failures == 0) printf("abi_smoke: %d rank(s) passed\n", nranks);
  return failures == 0 ? 0 : 1;
}
