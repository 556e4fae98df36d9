#!/bin/sh
# Serves /srv/www on port 8080 with busybox httpd, in the foreground.
exec httpd -f -p 8080 -h /srv/www
