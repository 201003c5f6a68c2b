#!/bin/sh
# Run by the nginx image's entrypoint before nginx starts (mounted into /docker-entrypoint.d/): reload nginx
# every 6 hours in the background, so certificates certbot renewed are served without a restart. A reload
# with a broken configuration keeps the running one.
(
    while :; do
        sleep 6h
        nginx -s reload
    done
) &
