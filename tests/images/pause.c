/* The pod sandbox's process: holds the pod's namespaces open and, as PID 1 of a shared
 * PID namespace, reaps the orphans the pod's containers leave, until it is told to stop.
 * Static, so the image needs nothing else. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) { stop = sig; }

static void on_child(int sig) {
  int saved = errno;
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(int argc, char **argv) {
  struct sigaction sa;
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("plinth pause");
    return 0;
  }
  /* PID 1 ignores signals it has no handler for, so TERM and INT need one. */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) return 1;
  sa.sa_handler = on_child;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &sa, NULL) < 0) return 2;
  if (getpid() != 1) fputs("pause: not PID 1, orphans will not come here\n", stderr);
  while (!stop) pause();
  return 0;
}
