/* Single-core FP32 FMA throughput ceiling: register-only loops of independent FMA chains.
 *
 *   gcc -O2 -o peak_fma benchmarks/peak_fma.c -lpthread && ./peak_fma [threads] [seconds per run]
 *   (or: make bench-peak)
 *
 * Each variant runs CHAINS independent accumulator chains (acc_i = acc_i * x + y) so that the FMA
 * latency (4 cycles on Zen 3/4) is hidden and only the FMA pipes' throughput counts; no memory is
 * touched inside the loop. GFLOP/s are counted as 2 flops per lane per FMA and divided by the
 * process's CPU time (clock_gettime(CLOCK_PROCESS_CPUTIME_ID)) so that a shared machine does not
 * lower the figure; wall time is printed alongside. With T threads each runs the same loop; the
 * figure is per CPU-second (= per core when each thread has a core) and in total per wall second.
 * Each loop is compiled for its ISA through a target attribute; the AVX-512 one runs only when the
 * CPU reports avx512f (on Zen 4 its 512-bit FMAs are split into two 256-bit halves: same peak).
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 12 /* independent accumulators: >= latency * pipes (4 * 2 = 8) */

static double now(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

typedef struct {
  long iters;
  int wide; /* 0: 256-bit (AVX2/FMA), 1: 512-bit (AVX-512F) */
  float sink;
} job_t;

/* CHAINS named accumulators (not an array: an array would be kept in memory), 12 FMAs per iteration. */
#define FMA12(F)                                                                                       \
  a0 = F(a0, x, y), a1 = F(a1, x, y), a2 = F(a2, x, y), a3 = F(a3, x, y), a4 = F(a4, x, y),           \
  a5 = F(a5, x, y), a6 = F(a6, x, y), a7 = F(a7, x, y), a8 = F(a8, x, y), a9 = F(a9, x, y),           \
  a10 = F(a10, x, y), a11 = F(a11, x, y)

__attribute__((noinline, target("avx2,fma"))) static float run_avx2(long iters) {
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f), a3 = _mm256_set1_ps(3.f);
  __m256 a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f), a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f);
  __m256 a8 = _mm256_set1_ps(8.f), a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
  for (long n = 0; n < iters; ++n) FMA12(_mm256_fmadd_ps);
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float o[8];
  _mm256_storeu_ps(o, s);
  return o[0];
}

__attribute__((noinline, target("avx512f"))) static float run_avx512(long iters) {
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  __m512 a0 = _mm512_set1_ps(0.f), a1 = _mm512_set1_ps(1.f), a2 = _mm512_set1_ps(2.f), a3 = _mm512_set1_ps(3.f);
  __m512 a4 = _mm512_set1_ps(4.f), a5 = _mm512_set1_ps(5.f), a6 = _mm512_set1_ps(6.f), a7 = _mm512_set1_ps(7.f);
  __m512 a8 = _mm512_set1_ps(8.f), a9 = _mm512_set1_ps(9.f), a10 = _mm512_set1_ps(10.f), a11 = _mm512_set1_ps(11.f);
  for (long n = 0; n < iters; ++n) FMA12(_mm512_fmadd_ps);
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return _mm512_reduce_add_ps(s);
}

static volatile float g_sink; /* keeps the (otherwise pure) loops from being optimised away */

static void* worker(void* p) {
  job_t* j = (job_t*)p;
  if (j->wide) {
    j->sink = run_avx512(j->iters);
    g_sink = j->sink;
    return NULL;
  }
  j->sink = run_avx2(j->iters);
  g_sink = j->sink;
  return NULL;
}

static void measure(const char* name, int wide, int lanes, int threads, double seconds) {
  long iters = 1000000;
  for (;;) { /* calibrate on one thread: about 0.1 s */
    job_t j = {iters, wide, 0.f};
    double t0 = now(CLOCK_MONOTONIC);
    worker(&j);
    if (now(CLOCK_MONOTONIC) - t0 > 0.1) break;
    iters *= 2;
  }
  iters = (long)(iters * seconds / 0.1);
  double best_cpu = 1e30, best_wall = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    pthread_t th[64];
    job_t jobs[64];
    double c0 = now(CLOCK_PROCESS_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
    for (int t = 0; t < threads; ++t) {
      jobs[t] = (job_t){iters, wide, 0.f};
      pthread_create(&th[t], NULL, worker, &jobs[t]);
    }
    for (int t = 0; t < threads; ++t) pthread_join(th[t], NULL);
    double c = now(CLOCK_PROCESS_CPUTIME_ID) - c0, w = now(CLOCK_MONOTONIC) - w0;
    if (c < best_cpu) best_cpu = c;
    if (w < best_wall) best_wall = w;
  }
  const double flops = 2.0 * lanes * CHAINS * (double)iters * threads;
  printf("%-22s threads=%d  %7.1f GFLOP per CPU-second   %7.1f GFLOP/s wall (total)   (%.2f CPU-s)\n", name,
         threads, flops / best_cpu / 1e9, flops / best_wall / 1e9, best_cpu);
}

int main(int argc, char** argv) {
  int maxt = argc > 1 ? atoi(argv[1]) : 2;
  double seconds = argc > 2 ? atof(argv[2]) : 1.0;
  if (maxt < 1) maxt = 1;
  if (maxt > 64) maxt = 64;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    printf("AVX2/FMA not reported by this CPU: nothing to measure\n");
    return 0;
  }
  for (int t = 1; t <= maxt; ++t) {
    measure("fp32 FMA 256-bit AVX2", 0, 8, t, seconds);
    if (__builtin_cpu_supports("avx512f"))
      measure("fp32 FMA 512-bit AVX512", 1, 16, t, seconds);
    else if (t == 1)
      printf("AVX-512F not reported by this CPU: 512-bit variant skipped\n");
  }
  return 0;
}
