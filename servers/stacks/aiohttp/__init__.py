"""The aiohttp stack: aiohttp.web on its own server (`rtbench serve --stack aiohttp`)."""
