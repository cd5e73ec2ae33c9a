% if check["error"]:
<p class="tg-refused" role="alert">⚠️ Telegram would refuse this: {{check["error"]}}</p>
% elif check["html"]:
<p class="muted">Preview, as Telegram shows it ({{check["length"]}} of {{check["limit"]}} characters):</p>
<div class="bubble tg">{{!check["html"]}}</div>
% end
