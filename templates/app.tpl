<!doctype html>
<html lang="{{lang}}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="color-scheme" content="light dark">
<meta name="referrer" content="same-origin">
<title>{{name}}</title>
<link rel="stylesheet" href="/static/app/app.css">
<link rel="modulepreload" href="/static/app/i18n.js">
<link rel="modulepreload" href="/static/app/ui.js">
<link rel="modulepreload" href="/static/app/tg.js">
<script src="https://telegram.org/js/telegram-web-app.js" defer></script>
<script type="module" src="/static/app/app.js"></script>
</head>
<body data-preview="{{preview_url}}">
<main id="app"><p class="loading boot">{{loading}}</p></main>
<noscript><p class="fatal">{{needs_js}}</p></noscript>
</body>
</html>
