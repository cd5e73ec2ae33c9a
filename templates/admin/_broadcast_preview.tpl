% if text.strip():
<p class="muted">Preview ({{length}} characters):</p>
<div class="bubble">{{text.strip()}}</div>
% end
