/*
 * pause: the process that holds a pod sandbox's namespaces open, for cellstack's local cluster.
 *
 * containerd's CRI plugin starts one per pod (the `sandbox_image`). It must: stay alive doing
 * nothing, reap zombies (it is PID 1 of the pod's PID namespace when the pod shares one), and exit
 * promptly and cleanly on SIGTERM or SIGINT. Built static (`gcc -static -Os`) by
 * e2e/scripts/images.sh, so the image holds this one file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  int saved = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("cellstack-pause 1.0");
    return 0;
  }
  if (getpid() != 1) {
    /* Not fatal: containerd runs it as PID 1 only when the pod has its own PID namespace. */
    fputs("pause: warning: not running as PID 1\n", stderr);
  }

  struct sigaction stop = {.sa_handler = on_stop};
  sigemptyset(&stop.sa_mask);
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  sigemptyset(&child.sa_mask);
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("pause: sigaction");
    return 1;
  }

  for (;;) {
    pause(); /* returns after each handled signal; the handlers did the work */
  }
}
