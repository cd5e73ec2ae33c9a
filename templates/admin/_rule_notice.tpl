% summary = rule_summary(report)
<div id="rule-notice"{{!' hx-swap-oob="true"' if get('oob') else ''}}>
  % if summary:
  <p class="flash warn notice">Telegram's rule for digital goods: {{summary}}. <a href="#telegram-rule">See them below</a>.</p>
  % end
</div>
